"""The prediction log: every acknowledged prediction, written before the answer, readable as Parquet.

Writers append JSON lines to a live segment with os.write (no user-space buffer, so a SIGKILL loses nothing
that was acknowledged) and, when configured, fsync once per batch (group commit). A full segment is only
sealed (renamed to .sealed) by the gateway: converting it to a Parquet part is pandas work that would hold the
GIL for a second in the request path, so `compact()` does it (monitoring flows and gateway start/stop call
it). Readers see parts, sealed and live segments, skip a torn last line, and de-duplicate by prediction id.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from tollgate.procs import pid_alive

FEATURE_PREFIX = "f."
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
]


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
    """Flatten log records (features nested) into columns; features become `f.<name>`."""
    if not records:
        return pd.DataFrame(columns=BASE_COLUMNS)
    base = pd.DataFrame.from_records([{k: r.get(k) for k in BASE_COLUMNS} for r in records])
    feats = pd.DataFrame.from_records([r.get("features") or {} for r in records]).add_prefix(FEATURE_PREFIX)
    frame = pd.concat([base, feats], axis=1)
    frame["entity_id"] = frame["entity_id"].astype(str)
    frame["model_version"] = frame["model_version"].astype(str)
    return frame


def _to_parquet(segment: Path) -> Path:
    part = segment.with_name(segment.name.split(".")[0] + ".parquet")
    tmp = part.with_suffix(".parquet.tmp")
    records_to_frame(_segment_records(segment)).to_parquet(tmp, index=False)
    os.replace(tmp, part)
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
        self._seq = 0
        self._open_segment()

    def recover(self) -> list[Path]:
        """Convert segments left by an earlier (crashed or stopped) process, and sealed ones, to Parquet."""
        return compact(self.folder)

    def _open_segment(self) -> None:
        self._seq += 1
        name = f"seg-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{self._seq:06d}.jsonl"
        self.path = self.folder / name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
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
    """Convert sealed segments, and live ones whose gateway process is gone, to Parquet parts."""
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
    return done


def iter_log_frames(folder: Path, since: float | None = None) -> Iterator[pd.DataFrame]:
    """The log as a stream of frames (one per Parquet part or live segment), rows at or after `since`."""
    if not folder.exists():
        return
    for path in sorted([*folder.glob("seg-*.parquet"), *folder.glob("seg-*.jsonl")]):
        try:
            frame = pd.read_parquet(path) if path.suffix == ".parquet" else records_to_frame(_segment_records(path))
        except FileNotFoundError:
            part = path.with_name(path.name.split(".")[0] + ".parquet")  # converted between listing and reading
            if not part.exists():
                continue
            frame = pd.read_parquet(part)
        if since is not None and len(frame):
            frame = frame[frame["ts"] >= since]
        if len(frame):
            yield frame


def read_log(folder: Path, since: float | None = None) -> pd.DataFrame:
    """The whole log (or the rows since `since`) as one frame, de-duplicated by prediction id."""
    frames = list(iter_log_frames(folder, since))
    if not frames:
        return records_to_frame([])
    return pd.concat(frames, ignore_index=True).drop_duplicates("prediction_id", keep="first").reset_index(drop=True)
