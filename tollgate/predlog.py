"""The prediction log: every acknowledged prediction, written before the answer, readable as Parquet.

Writers append JSON lines to a live segment with os.write (no user-space buffer, so a SIGKILL loses nothing
that was acknowledged) and, when configured, fsync once per batch (group commit). A full segment is only
sealed (renamed to .sealed) by the gateway: converting it to a Parquet part is pandas work that would hold the
GIL for a second in the request path, so `compact()` does it (monitoring flows and gateway start/stop call
it). Readers see parts, sealed and live segments, skip a torn last line, and de-duplicate by prediction id.

A record (serving/scoring.py writes them): prediction_id, request_id, ts (when it was answered, epoch s), entity_id,
model_version, role (champion | shadow | canary | batch: tasks/batch.py), score (objective.score), decision (the class value for classification, as
answered: int, bool or text; float for regression), latency_ms, proba (multiclass: the class probabilities in objective.classes order; None for other
tasks), event_ts (the request's own dataset.timestamp value as epoch seconds UTC, None when absent) and features
(every schema column the request carried except the entity id and the target). Logs written before proba and
event_ts existed read with both columns null.

Sealed parts can live in an S3-compatible store (serving.log_uri, issue 14): the log folder's `remote.json` says
where `compact()` ships each Parquet part once it is written (uploaded whole, then the local copy removed; a
failed upload keeps it here), and every place parts were ever shipped to, which `log_parts` lists beside the local
ones. A shipped part is named by a self-contained URI (s3://bucket/prefix/seg-....parquet, with the endpoint of an
S3-compatible store as pyarrow's query parameters), so a Dask worker reads it with nothing but AWS_* credentials
in its environment. The live segment, the only thing written per request, always stays local (fsync).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import pandas as pd

from tollgate.procs import pid_alive

log = logging.getLogger(__name__)

FEATURE_PREFIX = "f."
REMOTE_FILE = "remote.json"
DEFAULT_CHUNK_ROWS = 250_000  # compute.chunk_rows: rows of one log part in memory at a time
_SEGMENT_SEQ = itertools.count(1)
BASE_COLUMNS = [
    "prediction_id",
    "request_id",
    "ts",
    "entity_id",
    "model_version",
    "role",
    "score",
    "decision",
    "latency_ms",
    "proba",
    "event_ts",
]

# Regression decisions are values, so "the same decision" needs a tolerance: two values agree when they differ by
# at most this share of the spread (standard deviation) of the baseline's values in the compared set (falling back
# to the largest baseline magnitude when the spread is 0). A quarter of a standard deviation: differences smaller
# than that barely move a case within the population the model sees, while a challenger that disagrees with the
# champion by a sizeable fraction of the spread fails rollout.min_agreement. Scale-free, and safe for targets
# centred on zero (where a tolerance relative to each value would reject every pair). The default of
# rollout.regression_tolerance, which callers pass.
REGRESSION_AGREEMENT_TOLERANCE = 0.25


def decisions_agree(
    task: str, baseline: Any, other: Any, tolerance: float = REGRESSION_AGREEMENT_TOLERANCE
) -> np.ndarray:
    """Per pair, whether two models' decisions agree (a bool array): classification decisions are equal; regression
    values are within `tolerance` x the baseline's spread (see REGRESSION_AGREEMENT_TOLERANCE)."""
    if task != "regression":
        base_cls, other_cls = np.asarray(baseline), np.asarray(other)
        if base_cls.dtype.kind in "iufb" and other_cls.dtype.kind in "iufb":
            return base_cls.astype("int64") == other_cls.astype("int64")
        return np.asarray([a == b for a, b in zip(base_cls.tolist(), other_cls.tolist(), strict=True)], dtype=bool)
    base, mine = np.asarray(baseline, dtype="float64"), np.asarray(other, dtype="float64")
    if not len(base):
        return np.zeros(0, dtype=bool)
    scale = float(np.std(base)) or float(np.max(np.abs(base)))
    return np.abs(mine - base) <= tolerance * scale


def event_seconds(value: Any, fmt: str = "auto") -> float | None:
    """A timestamp value as epoch seconds (UTC); None for None. ISO 8601 text and datetimes (naive means UTC) are
    read whatever the column's ColumnSpec.format (conformed data and the smoke records carry them so); numbers are
    read the way the format declares: "epoch_s"/"epoch_ms" since 1970-01-01 UTC, "year" as 1 January of that
    year; "auto" takes no numbers. Raises ValueError naming what is wrong with anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"expected an ISO 8601 date or time, got {value!r}") from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if fmt == "auto":
        raise ValueError(f"expected an ISO 8601 date or time as text, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a number ({fmt}) or ISO 8601 text, got {value!r}")
    if fmt == "epoch_s":
        return float(value)
    if fmt == "epoch_ms":
        return float(value) / 1000.0
    if float(value) != int(value) or not 1 <= int(value) <= 9999:
        raise ValueError(f"expected a whole year, got {value!r}")
    return datetime(int(value), 1, 1, tzinfo=UTC).timestamp()


def _segment_records(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break  # torn write from a crash: never acknowledged
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return out


def records_to_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Flatten log records (features nested) into columns; features become `f.<name>`; fields a record does not
    carry (proba, event_ts in older logs) are null."""
    if not records:
        return pd.DataFrame(columns=BASE_COLUMNS)
    base = pd.DataFrame({k: [r.get(k) for r in records] for k in BASE_COLUMNS})
    base["event_ts"] = base["event_ts"].astype("float64")
    feats = pd.DataFrame.from_records([r.get("features") or {} for r in records]).add_prefix(FEATURE_PREFIX)
    for col in feats.columns:
        feats[col] = _one_type(feats[col])
    frame = pd.concat([base, feats], axis=1)
    frame["entity_id"] = frame["entity_id"].astype(str)
    frame["model_version"] = frame["model_version"].astype(str)
    return frame


def _one_type(values: pd.Series) -> pd.Series:
    """A logged column as sent, unless clients sent one field with several JSON types (e.g. a timestamp as ISO
    text by one client and epoch seconds by another): then its values as text, so the column has one Parquet
    type (readers coerce numbers back with pd.to_numeric)."""
    if values.dtype != object:
        return values
    present = values[values.notna()]
    kinds = {type(v) for v in present}
    if len(kinds) <= 1 or kinds <= {int, float}:
        return values
    return values.map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))


def _arrow_schema(frame: pd.DataFrame) -> Any:
    """The frame's Arrow schema with proba as list<double> even when every row is null (non-multiclass), so all
    parts of a log share one type for it."""
    import pyarrow as pa

    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    return schema.set(schema.get_field_index("proba"), pa.field("proba", pa.list_(pa.float64())))


def with_base_columns(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A frame read from any log part with every BASE_COLUMNS column (missing ones, from older logs, as null);
    with `columns`, exactly those columns (a feature a part lacks is null too)."""
    wanted = BASE_COLUMNS if columns is None else list(columns)
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        frame = frame.copy()
        for c in missing:
            numeric = c == "event_ts"
            frame[c] = pd.Series(
                math.nan if numeric else None, index=frame.index, dtype="float64" if numeric else object
            )
    return frame if columns is None or list(frame.columns) == wanted else frame[wanted]


def write_part(frame: pd.DataFrame, part: Path) -> Path:
    """A log part (`seg-*.parquet`, flat columns as records_to_frame makes them) written under a temporary name,
    then renamed into place: readers never see half of one."""
    tmp = part.with_suffix(".parquet.tmp")
    frame.to_parquet(tmp, index=False, schema=_arrow_schema(frame))
    os.replace(tmp, part)
    return part


def _to_parquet(segment: Path) -> Path:
    part = write_part(
        records_to_frame(_segment_records(segment)), segment.with_name(segment.name.split(".")[0] + ".parquet")
    )
    segment.unlink()
    return part


class PredictionLog:
    """Append-only writer for one gateway process."""

    def __init__(self, folder: Path, fsync: bool = True, rotate_rows: int = 50_000):
        self.folder = folder
        self.fsync = fsync
        self.rotate_rows = rotate_rows
        folder.mkdir(parents=True, exist_ok=True)
        self.recover()
        self._lock = threading.Lock()
        self._open_segment()

    def recover(self) -> list[Path]:
        """Convert segments left by an earlier (crashed or stopped) process, and sealed ones, to Parquet."""
        return compact(self.folder)

    def _open_segment(self) -> None:
        # one sequence per process, not per writer: a second writer opened in the same second must not reuse a
        # name (its part would replace the first one's)
        name = f"seg-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{next(_SEGMENT_SEQ):06d}.jsonl"
        self.path = self.folder / name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._rows = 0

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append records durably (one write call, then fsync if configured); returns when they are safe."""
        if not records:
            return
        payload = b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for r in records)
        with self._lock:
            view = memoryview(payload)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(self._fd)
            self._rows += len(records)
            if self._rows >= self.rotate_rows:
                self._rotate()

    def _rotate(self) -> None:
        old = self.path
        os.close(self._fd)
        os.replace(old, old.with_name(old.name.replace(".jsonl", ".sealed.jsonl")))
        self._open_segment()

    def close(self) -> None:
        """Close and convert the live segment."""
        with self._lock:
            os.close(self._fd)
            if self._rows:
                _to_parquet(self.path)
            else:
                self.path.unlink(missing_ok=True)


def compact(folder: Path) -> list[Path]:
    """Convert sealed segments, and live ones whose gateway process is gone, to Parquet parts; then ship the
    folder's Parquet parts to its remote store, if it has one (`set_remote`)."""
    done = []
    for segment in sorted(folder.glob("seg-*.jsonl")):
        if ".sealed." not in segment.name:
            pid = int(segment.name.split("-")[2])
            if pid == os.getpid() or pid_alive(pid):
                continue  # a live gateway is still appending to it
        try:
            done.append(_to_parquet(segment))
        except FileNotFoundError:
            continue  # compacted by someone else meanwhile
    ship(folder)
    return done


Part = Path | str  # a local part, or the URI of one shipped to a remote store


def part_name(part: Part) -> str:
    """seg-....parquet of a local path or a shipped part's URI."""
    return part.name if isinstance(part, Path) else part.split("?")[0].rsplit("/", 1)[-1]


def as_part(text: str) -> Part:
    """A part as a plan carries it (text) back to what `part_frames` reads."""
    return text if text.startswith("s3://") else Path(text)


def log_parts(folder: Path) -> list[Part]:
    """The log's parts in order: sealed Parquet parts (here, or shipped to a remote store) and JSONL segments not
    yet converted."""
    if not folder.exists():
        return []
    # remote first, then JSONL, then local Parquet: a part shipped or a segment converted between two listings is
    # then found where it went, and each is listed once (by its name's stem)
    remote = [u for entry in read_remote(folder)["remotes"] for u in remote_parts(entry)]
    segments = list(folder.glob("seg-*.jsonl"))
    parts = list(folder.glob("seg-*.parquet"))
    local = {p.name.split(".")[0] for p in parts}
    shipped = {part_name(u).split(".")[0]: u for u in remote}
    listed: list[Part] = [*parts, *(u for stem, u in shipped.items() if stem not in local)]
    converted = local | set(shipped)
    listed += [s for s in segments if s.name.split(".")[0] not in converted]
    return sorted(listed, key=part_name)


# -- the remote store of sealed parts (serving.log_uri) --------------------------------------------------------
def _target(uri: str, endpoint: str | None) -> dict[str, str | None]:
    return {"uri": uri.rstrip("/"), "endpoint": endpoint}


def read_remote(folder: Path) -> dict[str, Any]:
    """The folder's remote.json: {"upload_to": target or None, "remotes": every target parts were shipped to}."""
    try:
        body = json.loads((folder / REMOTE_FILE).read_text())
    except (OSError, ValueError):
        return {"upload_to": None, "remotes": []}
    return {"upload_to": body.get("upload_to"), "remotes": list(body.get("remotes") or [])}


def set_remote(folder: Path, uri: str | None, endpoint: str | None = None) -> None:
    """Where this log's sealed parts go from now on (None: they stay here). Earlier targets stay listed, so parts
    shipped there are still read."""
    body = read_remote(folder)
    target = _target(uri, endpoint) if uri else None
    remotes = body["remotes"] + ([target] if target and target not in body["remotes"] else [])
    if body == {"upload_to": target, "remotes": remotes}:
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{REMOTE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"upload_to": target, "remotes": remotes}))
    os.replace(tmp, folder / REMOTE_FILE)


def configure_remote(folder: Path, log_uri: str | None, endpoint: str | None, model: str) -> None:
    """set_remote from the config: serving.log_uri (s3://bucket/prefix, parts under <prefix>/<model>) and
    servers.s3_endpoint_url."""
    set_remote(folder, f"{log_uri}/{model}" if log_uri else None, endpoint if log_uri else None)


def remote_uri(target: dict[str, Any], name: str = "") -> str:
    """The URI of `name` under a target, carrying an S3-compatible store's endpoint as pyarrow's query parameters."""
    uri = f"{target['uri']}/{name}" if name else target["uri"]
    if target.get("endpoint"):
        url = urlsplit(str(target["endpoint"]))
        uri += f"?endpoint_override={url.netloc}&scheme={url.scheme or 'https'}"
    return uri


def _fs(uri: str) -> tuple[Any, str]:
    from pyarrow import fs

    return fs.FileSystem.from_uri(uri)


def remote_parts(target: dict[str, Any]) -> list[str]:
    """The URIs of the parts shipped to one target."""
    from pyarrow import fs

    store, base = _fs(remote_uri(target))
    infos = store.get_file_info(fs.FileSelector(base, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.base_name.startswith("seg-") and i.base_name.endswith(".parquet"))
    return [remote_uri(target, n) for n in names]


def ship(folder: Path) -> list[str]:
    """Upload the folder's Parquet parts to its remote target (each object written whole), removing each local
    copy after its upload; one that fails stays here, read from here, and is tried again next time."""
    target = read_remote(folder)["upload_to"]
    if not target:
        return []
    shipped = []
    for part in sorted(folder.glob("seg-*.parquet")):
        uri = remote_uri(target, part.name)
        try:
            store, key = _fs(uri)
            with part.open("rb") as src, store.open_output_stream(key) as out:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
        except FileNotFoundError:
            continue  # shipped by another process meanwhile
        except Exception as exc:  # the store is down or refuses: the part stays here, nothing is lost
            log.warning("prediction log part %s not shipped to %s: %s", part.name, target["uri"], exc)
            break
        part.unlink(missing_ok=True)
        shipped.append(uri)
    return shipped


def part_frames(
    path: Part, since: float | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS, columns: Sequence[str] | None = None
) -> Iterator[pd.DataFrame]:
    """One log part as frames of at most `chunk_rows` rows (a Parquet part in record batches; a JSONL segment,
    bounded by serving.log_rotate_rows, whole), rows at or after `since`. Every BASE_COLUMNS column is present,
    or, when `columns` are named, only those (the ones a part lacks as nulls) and `ts`: a reader that needs a few
    columns reads only them. A segment sealed or converted to Parquet between listing and reading is read from
    where it went."""
    import pyarrow.parquet as pq

    wanted = None if columns is None else list(dict.fromkeys(["ts", *columns]))
    frames: Iterable[pd.DataFrame] = []
    if isinstance(path, str):  # a part shipped to a remote store
        store, key = _fs(path)
        parquet = pq.ParquetFile(store.open_input_file(key))
        present = None if wanted is None else [c for c in wanted if c in parquet.schema_arrow.names]
        frames = (b.to_pandas() for b in parquet.iter_batches(batch_size=chunk_rows, columns=present))
    elif path.suffix == ".jsonl":
        # the gateway may seal a live segment (rename to .sealed.jsonl) and compact() convert a sealed one to
        # Parquet between listing and reading: follow it
        stem = path.name.split(".")[0]
        for candidate in dict.fromkeys([path, path.with_name(f"{stem}.sealed.jsonl")]):
            try:
                frames = [records_to_frame(_segment_records(candidate))]
                break
            except FileNotFoundError:
                continue
        else:
            path = path.with_name(f"{stem}.parquet")
            if not path.exists():
                return
    if isinstance(path, Path) and path.suffix == ".parquet":
        try:
            parquet = pq.ParquetFile(path)
        except FileNotFoundError:  # shipped to the remote store between listing and reading: read it there
            target = read_remote(path.parent)["upload_to"]
            if not target:
                raise
            yield from part_frames(remote_uri(target, path.name), since, chunk_rows, columns)
            return
        present = None if wanted is None else [c for c in wanted if c in parquet.schema_arrow.names]
        frames = (b.to_pandas() for b in parquet.iter_batches(batch_size=chunk_rows, columns=present))
    for frame in frames:
        frame = with_base_columns(frame, wanted)
        if since is not None and len(frame):
            frame = frame[frame["ts"] >= since]
        if len(frame):
            yield frame


def iter_log_frames(
    folder: Path, since: float | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """The log as a stream of frames (each part in chunks of at most `chunk_rows` rows), rows at or after `since`."""
    for path in log_parts(folder):
        yield from part_frames(path, since, chunk_rows)


def read_log(folder: Path, since: float | None = None) -> pd.DataFrame:
    """The whole log (or the rows since `since`) as one frame, de-duplicated by prediction id."""
    frames = list(iter_log_frames(folder, since))
    if not frames:
        return records_to_frame([])
    return pd.concat(frames, ignore_index=True).drop_duplicates("prediction_id", keep="first").reset_index(drop=True)
