"""Validation stage: read a table safely and run a Great Expectations suite generated from the config's schema.

Fails closed: `validate_dataset` raises ValidationFailed, so a flow stops before training and registers nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.common import tollgate_task
from tasks.conform import Coercion, Rejection, conform
from tollgate.config import ColumnSpec, DatasetConfig

log = logging.getLogger(__name__)

INT_TYPES = ["int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "Int64", "Int32"]
FLOAT_TYPES = ["float64", "float32", "Float64", *INT_TYPES]
TYPE_LISTS: dict[str, list[str]] = {
    "int": INT_TYPES,
    "float": FLOAT_TYPES,
    "bool": ["bool", "boolean"],
    "category": ["object", "str", "string", "category"],
    "string": ["object", "str", "string"],
    "label": [*INT_TYPES, "bool"],
}
# A timestamp column that is already typed (Parquet datetimes, or epoch/year values converted by tasks/conform.py)
# is checked by dtype (see _gx_view).
DATETIME_TYPES = [f"datetime64[{u}]" for u in ("ns", "us", "ms", "s")]
SUITE_NAME = "tollgate-dataset"
# The Data Docs index lists this many of the newest validation results (each one's page stays). Without a
# limit, Great Expectations reads every stored result to rebuild the index after each validation: ~3 ms more
# per validation for every earlier one (1.3 s -> 1.7 s over 150 validations of the bundled table).
DATA_DOCS_INDEX_RESULTS = 100
SERVING_SUITE_NAME = "tollgate-serving"


class DataReadError(Exception):
    """The file could not be read as a table; the message names the path and the cause."""


class ValidationFailed(Exception):
    """The data failed its expectations; carries the report."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.summary())
        self.report = report


@dataclass(frozen=True)
class Failure:
    """One failed expectation, with what was observed."""

    column: str | None
    expectation: str
    observed: str
    unexpected_count: int | None = None
    examples: list[Any] = field(default_factory=list)

    def line(self) -> str:
        """A one-line, human-readable description."""
        where = f"column '{self.column}'" if self.column else "table"
        count = f"; {self.unexpected_count} unexpected rows" if self.unexpected_count is not None else ""
        ex = f"; e.g. {self.examples[:5]}" if self.examples else ""
        return f"{where}: {self.expectation} failed: {self.observed}{count}{ex}"


@dataclass(frozen=True)
class ValidationReport:
    """The verdict on one table: passed, the failures, and where the suite and Data Docs are."""

    source: str
    rows: int
    expectations: int
    failures: list[Failure]
    suite_path: str
    data_docs: str
    coercions: list[str] = field(default_factory=list)
    serving: bool = False  # the serving-time suite (the schema without the label) was used
    notes: list[str] = field(default_factory=list)  # how the suite was chosen, what was left out

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """Multi-line text naming every failing column, expectation, observed value and count."""
        suite = " (serving-time suite, no label)" if self.serving else ""
        head = f"validation of {self.source}{suite}: {self.rows} rows, {self.expectations} expectations, "
        if self.passed:
            return head + "all passed"
        return head + f"{len(self.failures)} failed\n" + "\n".join("  - " + f.line() for f in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


# -- reading -----------------------------------------------------------------------------------
def read_table(path: str | Path, nrows: int | None = None) -> pd.DataFrame:
    """Read a .csv or .parquet file (a CSV file's first `nrows` rows); raise DataReadError naming the path and cause
    for anything unreadable."""
    p = Path(path)
    if not p.exists():
        raise DataReadError(f"{p}: no such file")
    if p.is_dir():
        raise DataReadError(f"{p}: is a directory, expected a .csv or .parquet file")
    if p.stat().st_size == 0:
        raise DataReadError(f"{p}: file is empty (0 bytes)")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            return pd.read_parquet(p)
        except Exception as exc:  # pyarrow raises several types for truncated/corrupt files
            raise DataReadError(f"{p}: not a readable Parquet file (truncated or corrupt?): {exc}") from None
    if suffix == ".csv":
        try:
            frame = pd.read_csv(p, nrows=nrows)
        except pd.errors.EmptyDataError:
            raise DataReadError(f"{p}: file has no header and no rows") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataReadError(f"{p}: not a readable CSV file: {exc}") from None
        if frame.shape[1] == 1:
            header = str(frame.columns[0])
            for sep, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
                if sep in header:
                    raise DataReadError(
                        f"{p}: looks {name}-delimited (header '{header[:60]}'); Tollgate reads comma-separated CSV"
                    )
        return frame
    raise DataReadError(f"{p}: unsupported file type '{suffix or '(none)'}', expected .csv or .parquet")


# -- the suite ---------------------------------------------------------------------------------
def expected_columns(ds: DatasetConfig, serving: bool = False) -> dict[str, ColumnSpec]:
    """The schema's columns; at serving time (records as they arrive for scoring) without the label."""
    return {k: v for k, v in ds.columns.items() if not (serving and k == ds.target)}


def build_suite(
    ds: DatasetConfig, serving: bool = False, typed: dict[str, list[str]] | None = None, row_count: bool = True
) -> Any:
    """A GX ExpectationSuite generated from the dataset schema (`serving`: the same suite without the label,
    and without the training row-count floor). `typed`: columns whose type check uses the given GX type list
    (see `_gx_view`) instead of the schema type's. `row_count=False`: without the table's row-count range (a
    chunk of a larger file; the merge checks the file's total, see `_Merge`)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    columns = expected_columns(ds, serving)
    expectations: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(columns), exact_match=ds.extra_columns == "forbid"),
    ]
    if row_count:
        low, high = _row_range(ds, serving)
        expectations.append(gxe.ExpectTableRowCountToBeBetween(min_value=low, max_value=high))
    for name, spec in columns.items():
        expectations += _column_expectations(name, spec, gxe, (typed or {}).get(name))
    # All at once: `add_expectation` on a suite whose name a GX context in this process knows writes the whole
    # suite to that context's store per expectation (quadratic: 3.4 s per build at ~40 expectations).
    return gx.ExpectationSuite(name=SERVING_SUITE_NAME if serving else SUITE_NAME, expectations=expectations)


def _row_range(ds: DatasetConfig, serving: bool) -> tuple[int, int]:
    """The rows a table must have: at serving time at least one, else the schema's row_count range."""
    return (1 if serving else ds.row_count.min), ds.row_count.max


def _column_expectations(name: str, spec: ColumnSpec, gxe: Any, type_list: list[str] | None = None) -> list[Any]:
    out: list[Any] = []
    if type_list is not None:
        out.append(gxe.ExpectColumnValuesToBeInTypeList(column=name, type_list=type_list))
    elif spec.type == "timestamp":
        out.append(gxe.ExpectColumnValuesToBeDateutilParseable(column=name))
    else:
        out.append(gxe.ExpectColumnValuesToBeInTypeList(column=name, type_list=_type_list(spec)))
    null_ok = spec.max_null_fraction if spec.type not in ("label", "timestamp") else 0.0
    if null_ok < 1.0:
        out.append(gxe.ExpectColumnValuesToNotBeNull(column=name, mostly=round(1.0 - null_ok, 6)))
    if spec.min is not None or spec.max is not None:
        out.append(gxe.ExpectColumnValuesToBeBetween(column=name, min_value=spec.min, max_value=spec.max))
    if spec.categories:
        out.append(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=spec.categories))
    if spec.type == "label":
        out.append(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=spec.values))
    if spec.unique:
        out.append(gxe.ExpectColumnValuesToBeUnique(column=name))
    return out


def _type_list(spec: ColumnSpec) -> list[str]:
    """The GX type names a column's values may have; a label's follow its class values (ints, booleans or text)."""
    if spec.type == "label" and spec.values and all(isinstance(v, str) for v in spec.values):
        return TYPE_LISTS["string"]
    if spec.type == "label" and spec.values and all(isinstance(v, bool) for v in spec.values):
        return TYPE_LISTS["bool"]
    return TYPE_LISTS.get(spec.type, [])


def save_suite(ds: DatasetConfig, path: Path) -> Path:
    """Write the generated suite as JSON (the artifact that travels with a model version)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(build_suite(ds).to_json_dict(), indent=2, default=str))
    return path


# -- running -----------------------------------------------------------------------------------
def _gx_view(frame: pd.DataFrame, ds: DatasetConfig) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The frame GX sees, and the type list to check for each column whose dtype it changed or already knows.

    GX checks the type of an object column one Python call per row, every map expectation copies and scans
    object columns, and parsing already-typed datetimes as text could never fail; at a million rows that was
    most of validation's time. So: a timestamp column that is already datetime is checked by dtype (text keeps
    the dateutil check); a category/string column whose values are all strings (one C-level pass,
    `infer_dtype`) is handed to GX as pandas `string` and checked by that dtype. A column with values
    of mixed types stays object, so the per-row check still names the offending values. No value changes, and
    failure messages name the column's dtype as read."""
    out: pd.DataFrame | None = None
    typed: dict[str, list[str]] = {}
    for name, spec in ds.columns.items():
        if name not in frame.columns:
            continue
        col = frame[name]
        if spec.type == "timestamp" and pd.api.types.is_datetime64_any_dtype(col):
            if isinstance(col.dtype, pd.DatetimeTZDtype):  # GX cannot name a tz-aware dtype: the same instants in UTC
                out = frame.copy(deep=False) if out is None else out
                out[name] = col.dt.tz_convert(None)
            typed[name] = DATETIME_TYPES
        elif (spec.type in ("category", "string") or _type_list(spec) == TYPE_LISTS["string"]) and col.dtype == object:
            if pd.api.types.infer_dtype(col, skipna=True) not in ("string", "empty"):
                continue
            out = frame.copy(deep=False) if out is None else out
            # pandas `string` (GX cannot match a categorical dtype with a type-list name)
            out[name], typed[name] = col.astype(pd.StringDtype("python")), ["StringDtype"]
    return (frame if out is None else out), typed


def _wrong_type(col: str, kind: str, values: pd.Series, declared: str) -> Failure:
    """A dtype failure that counts and shows only the values that do not fit the declared type (GX counts every
    row of a column whose dtype is wrong, and its examples are mostly valid values); when every value would fit
    (numbers stored as text, say), it says so."""
    present = values.notna()
    if declared in ("int", "float"):
        fits = pd.to_numeric(values, errors="coerce").notna()
    elif declared == "bool":
        fits = values.isin([True, False])
    elif declared == "timestamp":
        fits = pd.to_datetime(values, errors="coerce", format="mixed").notna()
    elif declared in ("category", "string"):
        fits = values.map(lambda v: isinstance(v, str))
    else:
        fits = pd.Series(True, index=values.index)
    bad = present & ~fits.astype(bool)
    head = f"dtype {values.dtype}, expected {declared}"
    if bad.any():
        examples = list(dict.fromkeys(str(v)[:80] for v in values[bad].head(20)))[:5]
        return Failure(col, kind, f"{head}: values that are not {declared}", int(bad.sum()), examples)
    stored = pd.api.types.infer_dtype(values, skipna=True)
    return Failure(
        col, kind, f"{head}: every value is {stored} that would read as {declared}; store the column as {declared}"
    )


def _describe(r: Any, frame: pd.DataFrame, ds: DatasetConfig) -> Failure | None:
    """Turn one GX result into a Failure, or None when another failure already explains it."""
    cfg = r.expectation_config
    kind: str = cfg.type
    col = cfg.kwargs.get("column")
    res = r.result or {}
    if col is not None and col not in frame.columns:
        return None  # reported once by the table-columns expectation
    if not res:
        # GX could not evaluate it (e.g. a range check on text): the type check names the real cause.
        dtype = str(frame[col].dtype) if col in frame.columns else "?"
        return Failure(col, kind, f"could not be evaluated on dtype {dtype}")
    count = res.get("unexpected_count")
    examples = list(dict.fromkeys(str(v) for v in res.get("partial_unexpected_list") or []))
    if kind == "expect_table_columns_to_match_set":
        mism = (res.get("details") or {}).get("mismatched") or {}
        parts = []
        if mism.get("missing"):
            parts.append(f"missing columns {sorted(mism['missing'])}")
        if mism.get("unexpected"):
            parts.append(f"unexpected extra columns {sorted(mism['unexpected'])} (dataset.extra_columns: forbid)")
        return Failure(None, kind, "; ".join(parts) or f"observed {res.get('observed_value')}")
    if kind == "expect_table_row_count_to_be_between":
        return Failure(None, kind, f"{res.get('observed_value')} rows, expected {ds.row_count.min}..{ds.row_count.max}")
    spec = ds.columns[col]
    if kind == "expect_column_values_to_be_in_type_list":
        return _wrong_type(col, kind, frame[col], spec.type)
    if kind == "expect_column_values_to_not_be_null":
        frac = frame[col].isna().mean()
        return Failure(col, kind, f"null fraction {frac:.3f} exceeds max_null_fraction {spec.max_null_fraction}", count)
    if kind == "expect_column_values_to_be_between":
        values = pd.to_numeric(frame[col], errors="coerce")
        return Failure(
            col, kind, f"observed range {values.min()}..{values.max()}, allowed {spec.min}..{spec.max}", count, examples
        )
    if kind == "expect_column_values_to_be_in_set":
        allowed = spec.categories if spec.categories else spec.values
        return Failure(col, kind, f"values outside {allowed}", count, examples)
    if kind == "expect_column_values_to_be_unique":
        return Failure(col, kind, f"{int(frame[col].duplicated(keep=False).sum())} rows share an id", count, examples)
    if kind == "expect_column_values_to_be_dateutil_parseable":
        return Failure(col, kind, "values that are not parseable timestamps", count, examples)
    return Failure(col, kind, f"observed {res.get('observed_value')}", count, examples)


def conform_and_validate(
    frame: pd.DataFrame, ds: DatasetConfig, gx_root: Path, source: str = "dataframe", serving: bool = False
) -> tuple[pd.DataFrame, ValidationReport]:
    """Apply the documented dtype coercions (tasks/conform.py), then the suite; returns the conformed frame."""
    conformed, coercions, rejections = conform(frame, ds)
    report = validate_frame(conformed, ds, gx_root, source, serving)
    extra = [
        Failure(r.column, "conform_to_declared_type", r.reason, len(r.rows), [f"row {i}" for i in r.rows])
        for r in rejections
    ]
    failures = sorted([*report.failures, *extra], key=lambda f: (f.column is not None, f.column or "", f.expectation))
    notes = [f"{c.column}: {c.rule}" for c in coercions]
    return conformed, ValidationReport(**{**asdict(report), "failures": failures, "coercions": notes})


def validate_frame(
    frame: pd.DataFrame, ds: DatasetConfig, gx_root: Path, source: str = "dataframe", serving: bool = False
) -> ValidationReport:
    """Run the schema's suite (the serving suite when `serving`) on `frame` under gx_root; build Data Docs."""
    results, suite_name = _run_suite(frame, ds, gx_root, serving)
    failures = [f for r in results if not r.success and (f := _describe(r, frame, ds)) is not None]
    failures.sort(key=_failure_order)
    return _report(source, len(frame), len(results), failures, gx_root, suite_name, serving)


def _failure_order(f: Failure) -> tuple[bool, str, str]:
    return (f.column is not None, f.column or "", f.expectation)


def _report(
    source: str, rows: int, n: int, failures: list[Failure], gx_root: Path, suite_name: str, serving: bool
) -> ValidationReport:
    return ValidationReport(
        source=source,
        rows=rows,
        expectations=n,
        failures=failures,
        suite_path=str(gx_root / "gx" / "expectations" / f"{suite_name}.json"),
        data_docs=str(gx_root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"),
        serving=serving,
    )


def _run_suite(
    frame: pd.DataFrame, ds: DatasetConfig, gx_root: Path, serving: bool, row_count: bool = True, docs: bool = True
) -> tuple[list[Any], str]:
    """The suite's GX results on `frame` (one per expectation, SUMMARY format) and the suite's name; `docs`:
    Data Docs rebuilt from the run (a chunk's run builds none: a page of one chunk's results would mislead)."""
    import great_expectations as gx

    gx_root.mkdir(parents=True, exist_ok=True)
    # One validation at a time per state folder: two processes updating the same file-backed GX store at once
    # can read each other's half-written suite.
    with open(gx_root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ctx = gx.get_context(mode="file", project_root_dir=str(gx_root))
        ctx.variables.progress_bars = {"globally": False}  # type: ignore[assignment]
        if docs:
            _bound_docs_index(ctx)
        source_ = ctx.data_sources.add_or_update_pandas("tollgate")
        names = [a.name for a in source_.assets]
        asset = source_.get_asset("table") if "table" in names else source_.add_dataframe_asset("table")
        batch = (
            asset.batch_definitions[0]
            if asset.batch_definitions
            else asset.add_batch_definition_whole_dataframe("whole")
        )
        view, typed = _gx_view(frame, ds)
        checkpoint = _stored_checkpoint(ctx, build_suite(ds, serving, typed, row_count), batch, docs)
        result = checkpoint.run(batch_parameters={"dataframe": view})
    return [
        r for run in result.run_results.values() for r in run.results
    ], SERVING_SUITE_NAME if serving else SUITE_NAME


# GX's own `add_or_update` (suites, validation definitions and checkpoints; each of the last two updates the
# suite again) matches every new expectation against the stored ones with a list search whose every comparison
# re-serializes both expectations: quadratic in the number of expectations. A 165-column table (494
# expectations) took 53-70 s to validate, of which the checks themselves were a few seconds. These keep what is
# stored when it is what the schema asks for (one pass over the expectations) and otherwise replace it.
def _checkpoint_names(suite_name: str) -> tuple[str, str, str]:
    """The validation definition's name and the checkpoint names (with Data Docs, and without: chunks)."""
    return f"{suite_name}-validation", f"{suite_name}-checkpoint", f"{suite_name}-chunk-checkpoint"


def _stored_checkpoint(ctx: Any, suite: Any, batch: Any, docs: bool) -> Any:
    """The checkpoint that runs `suite` on `batch` (with a Data Docs update when `docs`), from the GX store when
    it is already there unchanged; whatever differs is replaced, dependants first (checkpoint, definition,
    suite), so no stored object ever points at a suite that is gone."""
    import great_expectations as gx
    from great_expectations.exceptions import DataContextError

    vd_name, *checkpoints = _checkpoint_names(suite.name)
    cp_name = checkpoints[0] if docs else checkpoints[1]

    def drop(factory: Any, *names: str) -> None:
        for name in names:
            with contextlib.suppress(DataContextError):  # not stored
                factory.delete(name)

    stored = _stored(ctx.suites, suite.name)
    if stored is None or _expectation_keys(stored) != _expectation_keys(suite):
        drop(ctx.checkpoints, *checkpoints)
        drop(ctx.validation_definitions, vd_name)
        drop(ctx.suites, suite.name)
        stored = ctx.suites.add(suite)
    vd = _stored(ctx.validation_definitions, vd_name)
    if vd is None or vd.suite.id != stored.id or vd.data.id != batch.id:
        drop(ctx.checkpoints, *checkpoints)
        drop(ctx.validation_definitions, vd_name)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=vd_name, data=batch, suite=stored))
    actions: list[Any] = [gx.checkpoint.UpdateDataDocsAction(name="data-docs")] if docs else []
    checkpoint = _stored(ctx.checkpoints, cp_name)
    if checkpoint is None or (
        [v.id for v in checkpoint.validation_definitions] != [vd.id]
        or [a.name for a in checkpoint.actions] != [a.name for a in actions]
        or checkpoint.result_format != "SUMMARY"
    ):
        drop(ctx.checkpoints, cp_name)
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(name=cp_name, validation_definitions=[vd], actions=actions, result_format="SUMMARY")
        )
    return checkpoint


def _bound_docs_index(ctx: Any) -> None:
    """Set the local Data Docs site's index to the newest DATA_DOCS_INDEX_RESULTS results (GX's own
    `validation_results_limit`); the project config is written only when it changes."""
    site = ctx.list_data_docs_sites().get("local_site")
    if site is None:
        return
    index = dict(site.get("site_index_builder") or {"class_name": "DefaultSiteIndexBuilder"})
    if index.get("validation_results_limit") != DATA_DOCS_INDEX_RESULTS:
        index["validation_results_limit"] = DATA_DOCS_INDEX_RESULTS
        ctx.update_data_docs_site("local_site", {**site, "site_index_builder": index})


def _stored(factory: Any, name: str) -> Any:
    """The GX object stored under `name`, or None."""
    from great_expectations.exceptions import DataContextError

    try:
        return factory.get(name)
    except DataContextError:
        return None


def _expectation_keys(suite: Any) -> list[str]:
    """Each expectation as canonical JSON without its id (numbers as floats: the store reads 0 back as 0.0)."""

    def norm(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [norm(x) for x in v]
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    out = []
    for e in suite.expectations:
        body = e.configuration.to_json_dict()
        body.pop("id", None)
        out.append(json.dumps(norm(body), sort_keys=True, default=str))
    return out


def validate_file(
    path: str | Path, ds: DatasetConfig, gx_root: Path, serving: bool | None = None, keep: bool = True
) -> tuple[pd.DataFrame | None, ValidationReport]:
    """Read, conform and validate a file (DataReadError for unreadable files); returns the conformed frame (for a
    file validated in chunks: None with `keep=False`, or when it failed; nothing holds the whole table then).

    `serving=True`: data as it arrives for scoring, validated by the same suite without the label; a label column
    that is present anyway is left out (and the report says so). `serving=None` decides by the data: a table
    without the label column is serving-time data (noted in the report). `serving=False` requires the label.

    A file of more than `ds.validate_chunk_rows` rows is read and validated chunk by chunk (`_Merge`): the same
    failures, counts and messages as the whole file would give, in memory bounded by the chunk."""
    chunks = iter_table(path, ds.validate_chunk_rows)
    first = next(chunks)
    rest = next(chunks, None)
    notes: list[str] = []
    if serving is None and ds.target not in first.columns:
        serving = True
        notes.append(f"no label column '{ds.target}': validated as serving-time data (the suite without the label)")
    elif serving and ds.target in first.columns:
        notes.append(f"serving-time data: the label column '{ds.target}' is present and was ignored")

    def prepared(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.drop(columns=[ds.target]) if serving and ds.target in frame.columns else frame

    if rest is None:  # one chunk: the whole table
        conformed, report = conform_and_validate(prepared(first), ds, gx_root, source=str(path), serving=bool(serving))
        return conformed, replace(report, notes=notes)
    merge = _Merge(ds, bool(serving))
    kept: list[pd.DataFrame] = []
    offset = 0
    pending = [first, rest]  # handed out and dropped one by one: no name holds a validated chunk
    del first, rest

    def every_chunk() -> Iterator[pd.DataFrame]:
        while pending:
            yield pending.pop(0)
        yield from chunks

    for i, chunk in enumerate(every_chunk(), start=1):
        chunk.index = pd.RangeIndex(offset, offset + len(chunk))  # file row numbers (no copy)
        chunk = prepared(chunk)
        conformed, coercions, rejections = conform(chunk, ds)
        results, suite_name = _run_suite(conformed, ds, gx_root, bool(serving), row_count=False, docs=False)
        merge.add(results, conformed, coercions, rejections, offset)
        offset += len(chunk)
        log.info("validated chunk %d (%d rows so far)", i, offset)
        if keep:
            kept.append(conformed)
        del chunk, conformed, results
        # GX's run leaves reference cycles that hold the chunk's frames: without a collection per chunk they
        # piled up (4.2 GB peak at 10M rows in chunks of 1M instead of 1.4 GB).
        gc.collect()
    report = merge.report(str(path), gx_root, suite_name)
    # The table for training: the conformed chunks joined (reading the file again whole instead cost ~1.5 s more at
    # 1.2M rows and did not lower training's peak at 10M, which is the fit's: see bench_training_10m).
    whole = pd.concat(kept, copy=False) if keep and report.passed else None
    del kept
    chunked = f"validated in {i} chunks of at most {ds.validate_chunk_rows:,} rows (dataset.validate_chunk_rows)"
    return whole, replace(report, data_docs="", notes=[*notes, f"{chunked}; no Data Docs are built for it"])


def iter_table(path: str | Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The table of a .csv or .parquet file in chunks of at most `chunk_rows` rows (a file that fits in one
    chunk is read whole, by `read_table`, and yielded once); DataReadError as `read_table` raises it."""
    p = Path(path)
    if p.suffix.lower() == ".parquet" and p.is_file() and p.stat().st_size:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(p)
            rows = pf.metadata.num_rows
        except Exception:  # unreadable: read_table names the cause
            rows = 0
        if rows > chunk_rows:
            yield from parquet_chunks(p, chunk_rows, 0, -(-rows // chunk_rows))
            return
    if p.suffix.lower() == ".csv" and p.is_file() and p.stat().st_size:
        head = read_table(p, nrows=chunk_rows + 1)
        if len(head) <= chunk_rows:  # the whole file
            yield head
            return
        try:
            for chunk in pd.read_csv(p, chunksize=chunk_rows):
                yield chunk.reset_index(drop=True)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataReadError(f"{p}: not a readable CSV file: {exc}") from None
        return
    yield read_table(p)


def parquet_chunks(path: str | Path, chunk_rows: int, first: int, last: int) -> Iterator[pd.DataFrame]:
    """Chunks first..last-1 of a Parquet file cut every `chunk_rows` rows (chunk k: rows k*chunk_rows onwards),
    as `iter_table` yields them, reading only the row groups that hold them: any span of chunks can be read by
    itself (a Dask task scoring its share of a batch run) and gives the same frames as one pass over the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    meta = pf.metadata
    start, stop = first * chunk_rows, min(last * chunk_rows, meta.num_rows)
    groups, at, offset = [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if offset + n > start and offset < stop:
            groups.append(g)
            at = offset if at is None else at
        offset += n
    if at is None:
        return
    schema = pf.schema_arrow  # with the pandas metadata: the same dtypes pd.read_parquet gives
    pending: list[Any] = []  # record batches from row `at` on, not yet yielded
    held = 0

    def cut(rows: int) -> pd.DataFrame:
        nonlocal pending, held
        table = pa.Table.from_batches(pending, schema=schema)
        rest = table.slice(rows)
        table = table.slice(0, rows)
        pending, held = rest.to_batches(), held - rows
        # Arrow's buffers freed column by column as pandas takes them over: one copy of the chunk at a time.
        return table.to_pandas(split_blocks=True, self_destruct=True).reset_index(drop=True)

    for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=groups):
        if at + batch.num_rows <= start:
            at += batch.num_rows
            continue
        if at < start:
            batch, at = batch.slice(start - at), start
        pending.append(batch)
        held += batch.num_rows
        del batch
        while held >= chunk_rows and at < stop:
            frame = cut(min(chunk_rows, stop - at))
            at += len(frame)
            yield frame
            del frame
        if at >= stop:
            return
    if held and at < stop:
        yield cut(min(held, stop - at))


class _Merge:
    """The results of one suite on consecutive chunks of a file, merged into the failures the whole file gives.

    Counts add up; `mostly` (the null fraction) is judged on the totals, so nulls packed into one chunk fail
    only when the file's fraction is over the limit; the row count is the file's; an observed range is the
    file's min..max; uniqueness is checked across chunks (64-bit hashes of every id, confirmed on the values);
    examples are the first unexpected values in file order, as GX lists them for a whole table."""

    def __init__(self, ds: DatasetConfig, serving: bool):
        self.ds, self.serving = ds, serving
        self.rows = 0
        self.expectations = 0
        self.failed: dict[tuple[str, str | None], list[Failure]] = {}
        self.nulls: dict[str, list[int]] = {}  # column -> [null rows, rows]
        self.ranges: dict[str, list[float]] = {}  # column -> [min, max] of its numeric values
        self.mostly: dict[str, float] = {}
        self.id_hashes: list[np.ndarray] = []
        self.coercions: dict[str, None] = {}
        self.rejections: dict[tuple[str | None, str], Failure] = {}

    def add(
        self,
        results: list[Any],
        chunk: pd.DataFrame,
        coercions: list[Coercion],
        rejections: list[Rejection],
        offset: int,
    ) -> None:
        self.rows += len(chunk)
        self.expectations = len(results) + 1  # and the file's row count
        for r in results:
            cfg = r.expectation_config
            kind, col = cfg.type, cfg.kwargs.get("column")
            if kind == "expect_column_values_to_not_be_null" and col in chunk.columns:
                tally = self.nulls.setdefault(col, [0, 0])
                tally[0] += int(chunk[col].isna().sum())
                tally[1] += len(chunk)
                self.mostly[col] = float(cfg.kwargs.get("mostly", 1.0))
                continue
            if kind == "expect_column_values_to_be_unique" and col in chunk.columns:
                self.id_hashes.append(pd.util.hash_pandas_object(chunk[col], index=False).to_numpy())
                continue
            if kind == "expect_column_values_to_be_between" and col in chunk.columns:
                values = pd.to_numeric(chunk[col], errors="coerce")
                lo, hi = values.min(), values.max()
                if pd.notna(lo):
                    got = self.ranges.setdefault(col, [float(lo), float(hi)])
                    got[0], got[1] = min(got[0], float(lo)), max(got[1], float(hi))
            if not r.success and (f := _describe(r, chunk, self.ds)) is not None:
                self.failed.setdefault((kind, col), []).append(f)
        for c in coercions:
            self.coercions[f"{c.column}: {c.rule}"] = None
        for rej in rejections:
            rows = [f"row {offset + i}" for i in rej.rows]
            key = (rej.column, rej.reason)
            old = self.rejections.get(key)
            if old is None:
                self.rejections[key] = Failure(rej.column, "conform_to_declared_type", rej.reason, len(rows), rows)
            else:
                examples = [*old.examples, *rows][:10]
                self.rejections[key] = replace(old, unexpected_count=len(examples), examples=examples)

    def report(self, source: str, gx_root: Path, suite_name: str) -> ValidationReport:
        failures = [self._merged(kind, col, parts) for (kind, col), parts in self.failed.items()]
        lo, hi = _row_range(self.ds, self.serving)
        if not lo <= self.rows <= hi:
            failures.append(
                Failure(
                    None,
                    "expect_table_row_count_to_be_between",
                    f"{self.rows} rows, expected {self.ds.row_count.min}..{self.ds.row_count.max}",
                )
            )
        for col, (nulls, rows) in self.nulls.items():
            if rows and (rows - nulls) / rows < self.mostly[col]:
                spec = self.ds.columns[col]
                failures.append(
                    Failure(
                        col,
                        "expect_column_values_to_not_be_null",
                        f"null fraction {nulls / rows:.3f} exceeds max_null_fraction {spec.max_null_fraction}",
                        nulls,
                    )
                )
        failures += self._duplicates(source)
        failures = sorted([*failures, *self.rejections.values()], key=_failure_order)
        report = _report(source, self.rows, self.expectations, failures, gx_root, suite_name, self.serving)
        return replace(report, coercions=list(self.coercions))

    def _merged(self, kind: str, col: str | None, parts: list[Failure]) -> Failure:
        """One failure from the chunks that failed it: counts added, examples in file order."""
        first = parts[0]
        counts = [p.unexpected_count for p in parts if p.unexpected_count is not None]
        examples = list(dict.fromkeys(e for p in parts for e in p.examples))
        if kind == "expect_column_values_to_be_in_type_list":
            examples = examples[:5]
        observed = first.observed
        if observed.startswith("observed range") and col in self.ranges:
            spec = self.ds.columns[col]
            lo, hi = (_as_stored(v) for v in self.ranges[col])
            observed = f"observed range {lo}..{hi}, allowed {spec.min}..{spec.max}"
        return replace(first, observed=observed, unexpected_count=sum(counts) if counts else None, examples=examples)

    def _duplicates(self, source: str) -> list[Failure]:
        """Rows whose id another row of the file shares: candidates by hash, confirmed on the values."""
        col = self.ds.id
        if not self.id_hashes or col not in self.ds.columns:
            return []
        hashes = np.concatenate(self.id_hashes)
        self.id_hashes = []
        hashes.sort()  # in place: no index arrays of the file's length
        same = hashes[1:] == hashes[:-1]
        if not same.any():
            return []
        suspects = np.unique(hashes[1:][same])
        del hashes, same
        # A shared hash: read the ids again and keep the rows whose hash is shared, then compare their values.
        parts = []
        for chunk in iter_table(source, self.ds.validate_chunk_rows):
            ids = conform(chunk[[col]], self.ds)[0][col]  # as the first pass hashed them
            parts.append(ids[np.isin(pd.util.hash_pandas_object(ids, index=False).to_numpy(), suspects)])
        values = pd.concat(parts, ignore_index=True)
        shared = values[values.duplicated(keep=False)]
        if shared.empty:
            return []
        examples = list(dict.fromkeys(str(v) for v in shared.head(20)))
        kind = "expect_column_values_to_be_unique"
        return [Failure(col, kind, f"{len(shared)} rows share an id", len(shared), examples)]


def _as_stored(v: float) -> Any:
    """A merged min/max as pandas prints the column's own (whole floats of an int column as ints)."""
    return int(v) if float(v).is_integer() else v


@tollgate_task
def describe_suite(ds: DatasetConfig) -> dict[str, Any]:
    """The generated suite as JSON (stored with the release)."""
    return dict(build_suite(ds).to_json_dict())


@tollgate_task
def validate_dataset(path: str, ds: DatasetConfig, gx_root: str) -> pd.DataFrame:
    """Read and validate the dataset; raise ValidationFailed (failing the flow run) unless every expectation passes."""
    frame, report = validate_file(path, ds, Path(gx_root), serving=False)
    if not report.passed:
        raise ValidationFailed(report)
    assert frame is not None  # keep=True
    return frame
