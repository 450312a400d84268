"""Batch inference: a table scored by a release in bounded chunks under the serving rules, logged like online
predictions (role `batch`, so drift checks and backfill cover it), and resumable.

OUTPUT (a folder) holds:
- manifest.json: the input (path, md5), the model, version and chunk_rows; a rerun into the same folder must
  match it (another input, version or chunking is refused, never mixed in);
- part-NNNNN.parquet: chunk NNNNN's scored rows: <dataset.id>, score, prediction, model_version, prediction_id;
- rejects-NNNNN.csv: chunk NNNNN's rows that fail the serving rules (tollgate.request_schema): row (0-based in the
  input), field, error; those rows are neither scored nor logged;
- summary.json: written last: model, version, input, rows, scored, rejected, parts and the rejects files.

A chunk is done when its part exists (written under a temporary name, then renamed). A rerun after a crash skips
the done chunks and writes the rest, and the folder ends byte for byte as one uninterrupted run leaves it:
prediction ids come from the input's md5, the version and the row number, never from a clock or a random draw.
Each chunk's rows reach the model's prediction log before its part is renamed, as a log part named after the
chunk (a rerun writes the same rows under the same name; readers de-duplicate by prediction id anyway).

A chunk in which more than batch.max_reject_share of the rows fail the rules stops the run (TooManyRejects) with
its rejects file written and nothing of it scored or logged; the chunks before it stay done.

Where it runs (flows/batch.py): in one process, or, with compute.dask_address set and a Parquet input of more
than one chunk, as Dask tasks of compute.parts_per_task chunks each (`score_chunks`: a task loads the release
and reads only its chunks' row groups, `tasks.validation.parquet_chunks`). Part k holds the same rows and bytes
either way. On Dask, a chunk over the reject limit fails its task and the run as above; chunks of other tasks
may be done too, and a rerun keeps them. A CSV input is read in order, in the calling process.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.common import run_logger, tollgate_task
from tasks.data import file_md5
from tasks.validation import iter_table, parquet_chunks
from tollgate.config import LoadedConfig
from tollgate.context import Context
from tollgate.paths import StatePaths
from tollgate.predlog import FEATURE_PREFIX, write_part
from tollgate.procs import usable_cores
from tollgate.registry import proven_serving
from tollgate.release import Release, load_release
from tollgate.request_schema import RequestSchema

ROLE = "batch"
MANIFEST, SUMMARY = "manifest.json", "summary.json"
STAGES = ("Production", "Staging")


class BatchError(Exception):
    """Nothing was scored: no input, no release to score with, or an OUTPUT folder that belongs to another run."""


class TooManyRejects(Exception):
    """A chunk's share of rows failing the serving rules is over batch.max_reject_share."""


@dataclass
class BatchResult:
    """What a batch run did (summary.json holds the same)."""

    model: str
    version: str
    input: str
    output: str
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    parts: int = 0
    skipped: int = 0  # parts a previous run had finished
    seconds: float = 0.0
    scoring: str = ""  # onnx, or sklearn: why not onnx
    rejects: list[str] = field(default_factory=list)  # the rejects files written
    phases: dict[str, float] = field(default_factory=dict)  # seconds: setup, read, check, score, log, write

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}


def release_to_score(ctx: Context, version: str | None, stage: str) -> Release:
    """The release that scores: `version` when given (any registered version), else the version the verified
    ledger holds in `stage` (what the gateway serves), never a registry stage moved by hand."""
    if version is not None:
        return load_release(ctx.config, ctx.registry, version=str(version))
    if stage not in STAGES:
        raise BatchError(f"stage {stage!r}: batch inference scores with {' or '.join(STAGES)} (or --version)")
    proven = proven_serving(ctx.registry)
    info = proven.champion if stage == "Production" else proven.staging
    if info is None:
        raise BatchError(
            f"{ctx.config.project.registered_model} has no {stage} version the promotion ledger proves: deploy one "
            "(`tollgate deploy VERSION`) or name one with --version"
        )
    return load_release(ctx.config, ctx.registry, version=info.version)


def output_folder(ctx: Context, output: str | None) -> Path:
    """OUTPUT as given, or the scheduled run's batch.output/<UTC date>."""
    if output:
        return Path(ctx.resolve(output))
    return Path(ctx.resolve(ctx.config.batch.output)) / datetime.now(UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class BatchPlan:
    """One run's settled facts, small and picklable (a Dask worker rebuilds the context from them): the config,
    the state folder, the input, the OUTPUT folder (claimed), the release's version and the chunking."""

    loaded: LoadedConfig
    home: Path
    src: Path
    out: Path
    version: str
    manifest: dict[str, Any]
    rows: int | None  # the Parquet footer's count; None for CSV (read in order)
    chunk_rows: int
    began: float  # perf_counter when the run began (setup is measured from it)

    @property
    def splittable(self) -> bool:
        """Any span of chunks can be read by itself: a Parquet file of more than one chunk (CSV is read in order)."""
        return self.rows is not None and self.rows > self.chunk_rows

    @property
    def chunks(self) -> int:
        """Chunks the spans cover: a file read in order is one span of every chunk it holds."""
        return -(-self.rows // self.chunk_rows) if self.rows is not None and self.splittable else 1

    def context(self) -> Context:
        return Context(loaded=self.loaded, paths=StatePaths(self.home))


@dataclass
class SpanResult:
    """What scoring a span of chunks did: counts, the rejects files written or found, seconds per phase."""

    rows: int = 0
    scored: int = 0
    parts: int = 0
    skipped: int = 0
    rejects: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def plan_file(
    ctx: Context,
    path: str | Path,
    output: str | Path,
    version: str | None = None,
    stage: str = "Production",
    chunk_rows: int | None = None,
) -> tuple[BatchPlan, Release]:
    """Check the input and the chunking, choose the release, claim OUTPUT (see the module docstring). BatchError
    and RegistryError say why nothing was written."""
    began = time.perf_counter()
    src, out = Path(path), Path(output)
    if not src.is_file():
        raise BatchError(f"{src}: no such file to score")
    if src.suffix.lower() not in (".parquet", ".csv"):
        raise BatchError(f"{src}: batch inference reads .parquet or .csv files")
    rows_per_chunk = chunk_rows or ctx.config.batch.chunk_rows
    if rows_per_chunk < 1:
        raise BatchError(f"chunk rows must be at least 1, not {rows_per_chunk}")
    release = release_to_score(ctx, version, stage)
    manifest = {
        "input": str(src.resolve()),
        "input_md5": file_md5(src),
        "model": release.model_name,
        "version": release.version,
        "chunk_rows": rows_per_chunk,
    }
    _claim(out, manifest)
    total = _row_count(src)
    plan = BatchPlan(ctx.loaded, ctx.paths.home, src, out, release.version, manifest, total, rows_per_chunk, began)
    return plan, release


def score_span(
    plan: BatchPlan,
    release: Release,
    first: int,
    last: int,
    say: Callable[[str], None] | None = None,
    scorer: ChunkScorer | None = None,
) -> SpanResult:
    """Check, score, log and write chunks first..last-1 of the plan's input (a chunk whose part exists was done
    by an earlier run and is counted, not scored again). TooManyRejects stops at the first chunk over the limit."""
    say = say or run_logger().info
    scorer = scorer or ChunkScorer(plan.context(), release, plan.manifest, plan.out)
    result = SpanResult()
    total, rows_per_chunk = plan.rows, plan.chunk_rows
    if plan.splittable:
        frames = parquet_chunks(plan.src, rows_per_chunk, first, last)
    else:
        frames = iter_table(plan.src, rows_per_chunk)
    started = clock = time.perf_counter()
    start = first * rows_per_chunk
    for part, chunk in enumerate(frames, start=first):
        scorer._lap("read", clock)
        n = len(chunk)
        done = scorer.part_path(part)
        earlier = done.exists()
        if earlier:
            scored = _parquet_rows(done)
            result.skipped += 1
        else:
            scored = scorer.score_chunk(part, start, chunk)
        rejects = scorer.rejects_path(part)
        if rejects.exists():
            result.rejects.append(str(rejects))
        result.rows, result.scored, result.parts = result.rows + n, result.scored + scored, result.parts + 1
        start += n
        del chunk
        elapsed = time.perf_counter() - started
        share = f"{start / total:4.0%} " if total else ""
        span = f" (chunks {first}..{last - 1})" if plan.splittable and (first, last) != (0, plan.chunks) else ""
        say(
            f"{share}{start:,}{f'/{total:,}' if total else ''} rows{span}: {result.scored:,} scored, "
            f"{result.rows - result.scored:,} rejected; {result.rows / max(elapsed, 1e-9):,.0f} rows/s"
            + (" (this part was done by an earlier run)" if earlier else "")
        )
        clock = time.perf_counter()
    result.seconds = scorer.seconds
    return result


@tollgate_task
def score_chunks(plan: BatchPlan, first: int, last: int) -> SpanResult:
    """One Dask task of a fanned-out run (compute.dask_address): the release loaded here, chunks first..last-1."""
    ctx = plan.context()
    return score_span(plan, load_release(ctx.config, ctx.registry, version=plan.version), first, last)


def finish(plan: BatchPlan, release: Release, spans: list[SpanResult], scoring: str, setup: float) -> BatchResult:
    """The spans' sums; summary.json written last (the same bytes however many runs, or workers, it took)."""
    result = BatchResult(release.model_name, release.version, str(plan.src), str(plan.out), scoring=scoring)
    phases = {"setup": setup}
    for span in spans:
        result.rows += span.rows
        result.scored += span.scored
        result.parts += span.parts
        result.skipped += span.skipped
        result.rejects += span.rejects
        for phase, took in span.seconds.items():
            phases[phase] = phases.get(phase, 0.0) + took
    result.rejected = result.rows - result.scored
    if result.rows == 0:
        raise BatchError(f"{plan.src}: no rows to score")
    result.seconds = round(time.perf_counter() - plan.began - setup, 3)
    result.phases = {k: round(v, 3) for k, v in phases.items()}
    # what the folder holds, the same bytes however many runs it took (no times, no paths of this folder)
    kept = ("model", "version", "input", "rows", "scored", "rejected", "parts")
    body = {**{k: getattr(result, k) for k in kept}, "rejects": [Path(p).name for p in result.rejects]}
    _write_json(plan.out / SUMMARY, body)
    return result


def announce(plan: BatchPlan, release: Release, scoring: str, where: str, say: Callable[[str], None]) -> None:
    """The run's first progress line: input, release, scoring path, chunking, output and where it runs."""
    total = plan.rows
    say(
        f"scoring {plan.src} with {release.model_name} v{release.version} ({scoring}) in chunks of "
        f"{plan.chunk_rows:,} rows" + (f" ({total:,} rows)" if total is not None else "") + f" into {plan.out}{where}"
    )


class ChunkScorer:
    """Scores chunks of one run: rules, model (loaded once), output part, rejects file, log part."""

    def __init__(self, ctx: Context, release: Release, manifest: dict[str, Any], out: Path):
        self.release, self.out = release, out
        self.schema = RequestSchema(release.config)
        self.objective = release.objective
        compiled = ctx.config.serving.compiled_scoring
        self.model, self.scoring = release.load_scorer(compiled, threads=usable_cores())
        self.limit = ctx.config.batch.max_reject_share
        self.log_dir = ctx.paths.model_log(release.model_name)
        self.seconds: dict[str, float] = {}  # per phase, over the chunks this run scored
        key = f"{manifest['input_md5']}:{release.model_name}:{release.version}:{manifest['chunk_rows']}"
        self.key = hashlib.sha256(key.encode()).hexdigest()[:16]

    def part_path(self, part: int) -> Path:
        return self.out / f"part-{part:05d}.parquet"

    def rejects_path(self, part: int) -> Path:
        return self.out / f"rejects-{part:05d}.csv"

    def score_chunk(self, part: int, start: int, chunk: pd.DataFrame) -> int:
        """Check, score and write one chunk (rows start.. of the input); returns how many rows were scored."""
        clock = time.perf_counter()
        chunk = chunk.reset_index(drop=True)
        faults = self.schema.frame_errors(chunk)
        bad = np.zeros(len(chunk), dtype=bool)
        bad[faults["row"].to_numpy()] = True
        if len(faults):
            faults = faults.assign(row=faults["row"] + start)
            _write_atomic(self.rejects_path(part), lambda tmp: faults.to_csv(tmp, index=False))
        share = bad.sum() / max(len(chunk), 1)
        if share > self.limit:
            first = faults.iloc[0]
            raise TooManyRejects(
                f"{int(bad.sum()):,} of {len(chunk):,} rows in input rows {start:,}..{start + len(chunk) - 1:,} "
                f"({share:.1%}) fail the serving rules, over batch.max_reject_share {self.limit:.1%}; nothing of "
                f"them was scored. Every row and field at fault: {self.rejects_path(part)} (first: row "
                f"{int(first['row'])}, {first['field']}: {first['error']})"
            )
        good = chunk[~bad] if bad.any() else chunk
        rows = np.flatnonzero(~bad) + start
        ids = self.key + "-" + pd.Series(rows).astype(str)
        clock = self._lap("check", clock)
        out = self.objective.outputs(self.model, good[self.release.features])
        took_ms = (time.perf_counter() - clock) * 1000
        score, decision = self.objective.score(out), self.objective.decision(out)
        clock = self._lap("score", clock)
        entity = good[self.schema.id_field].reset_index(drop=True)
        self._log(part, good.reset_index(drop=True), entity, ids, out, score, decision, took_ms)
        clock = self._lap("log", clock)
        scored = pd.DataFrame(
            {
                self.schema.id_field: entity,
                "score": score,
                "prediction": decision,
                "model_version": self.release.version,
                "prediction_id": ids,
            }
        )
        _write_atomic(self.part_path(part), lambda tmp: scored.to_parquet(tmp, index=False))
        self._lap("write", clock)
        return len(scored)

    def _lap(self, phase: str, since: float) -> float:
        """Add the time since `since` to `phase` (the run's profile: read, check, score, log, write); returns now."""
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - since
        return now

    def _log(
        self,
        part: int,
        good: pd.DataFrame,
        entity: pd.Series,
        ids: pd.Series,
        out: np.ndarray,
        score: np.ndarray,
        decision: np.ndarray,
        took_ms: float,
    ) -> None:
        """The chunk's rows as a prediction-log part (tollgate.predlog's columns, features as f.<column>)."""
        n = len(good)
        log = pd.DataFrame(
            {
                "prediction_id": ids,
                "request_id": f"batch-{self.key}-{part:05d}",
                "ts": time.time(),
                "entity_id": entity.astype(str),
                "model_version": self.release.version,
                "role": ROLE,
                "score": score,
                "decision": decision,
                "latency_ms": took_ms / max(n, 1),
                "proba": out.tolist() if self.objective.task == "multiclass" else [None] * n,
                "event_ts": self._event_ts(good),
            }
        )
        logged = [c for c in self.schema.logged if c in good.columns]
        features = good[logged].add_prefix(FEATURE_PREFIX)
        frame = pd.concat([log, features], axis=1)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        write_part(frame, self.log_dir / f"seg-batch-{self.key}-{part:05d}.parquet")

    def _event_ts(self, good: pd.DataFrame) -> np.ndarray:
        """Each row's dataset.timestamp as epoch seconds (NaN when absent or unreadable), as the gateway logs it."""
        column = self.schema.timestamp
        if column not in good.columns:
            return np.full(len(good), np.nan)
        values = good[column]
        if pd.api.types.is_datetime64_any_dtype(values.dtype):
            utc = values.dt.tz_convert("UTC") if values.dt.tz is not None else values
            seconds = utc.dt.tz_localize(None).astype("datetime64[ns]").astype("int64") / 1e9
            return np.where(values.isna().to_numpy(), np.nan, seconds.to_numpy())
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        table = [self.schema.event_ts({column: v}) for v in uniques.tolist()]
        lookup = np.array([np.nan if t is None else t for t in table] + [np.nan], dtype="float64")
        return lookup[codes]


def _claim(out: Path, manifest: dict[str, Any]) -> None:
    """Make `out` this run's folder: new or empty -> write the manifest; holding this run's manifest -> resume;
    anything else -> BatchError (nothing is mixed into another run's output)."""
    path = out / MANIFEST
    if path.exists():
        try:
            theirs = json.loads(path.read_text())
        except ValueError:
            theirs = None
        if theirs != manifest:
            differs = sorted(k for k in manifest if not isinstance(theirs, dict) or theirs.get(k) != manifest[k])
            raise BatchError(
                f"{out} holds the output of another batch run (its {MANIFEST} differs in {', '.join(differs)}): "
                "choose another output folder, or remove that one"
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BatchError(f"{out} exists and is not an empty folder: choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, manifest)


def _row_count(path: Path) -> int | None:
    """Rows in a Parquet file from its footer (None for CSV or an unreadable footer)."""
    if path.suffix.lower() != ".parquet":
        return None
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:  # unreadable: iter_table names the cause
        return None


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def _write_json(path: Path, body: dict[str, Any]) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n"))


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Write through a temporary file beside `path`, then rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
