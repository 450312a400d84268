"""Validation of a wide table: the bundled rows plus 150 float columns (165 columns, 494 expectations), validated
twice in one state folder by Tollgate's path (tasks.validation.validate_frame) and twice by the same suite stored
with Great Expectations' own `add_or_update` (suite, validation definition, checkpoint), as Tollgate did before,
in one run. The second validation of each is the one a user waits for on every later run.

Keys: validation_165_cols_s (Tollgate's second run, seconds), validation_165_cols_first_s,
validation_165_cols_gx_add_or_update_s (the baseline's second run) and validation_165_cols_ratio (Tollgate /
baseline)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import ROOT, project_config, record_results

NEEDS_STACK = False
EXTRA = 150


def _wide() -> tuple[pd.DataFrame, Any]:
    from tollgate.config import ColumnSpec

    ds = project_config().dataset
    frame = pd.read_parquet(ROOT / ds.path)
    rng = np.random.default_rng(0)
    extra = {f"x{i:03d}": rng.normal(size=len(frame)) for i in range(EXTRA)}
    frame = pd.concat([frame, pd.DataFrame(extra, index=frame.index)], axis=1)
    spec = ColumnSpec(type="float", min=-10, max=10, max_null_fraction=0.1)
    return frame, ds.model_copy(update={"columns": {**ds.columns, **dict.fromkeys(extra, spec)}})


def _gx_add_or_update(frame: pd.DataFrame, ds: Any, root: Path) -> bool:
    """The suite run as GX's own factories store it (add_or_update for each object)."""
    import great_expectations as gx

    from tasks.validation import _gx_view, build_suite

    ctx = gx.get_context(mode="file", project_root_dir=str(root))
    ctx.variables.progress_bars = {"globally": False}  # type: ignore[assignment]
    asset = ctx.data_sources.add_or_update_pandas("tollgate")
    table = (
        asset.get_asset("table") if "table" in [a.name for a in asset.assets] else asset.add_dataframe_asset("table")
    )
    batch = (
        table.batch_definitions[0] if table.batch_definitions else table.add_batch_definition_whole_dataframe("whole")
    )
    view, typed = _gx_view(frame, ds)
    suite = ctx.suites.add_or_update(build_suite(ds, False, typed))
    vd = ctx.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=f"{suite.name}-validation", data=batch, suite=suite)
    )
    checkpoint = ctx.checkpoints.add_or_update(
        gx.Checkpoint(
            name=f"{suite.name}-checkpoint",
            validation_definitions=[vd],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs")],
            result_format={"result_format": "SUMMARY"},
        )
    )
    return bool(checkpoint.run(batch_parameters={"dataframe": view}).success)


def _twice(run: Any) -> tuple[float, float]:
    times = []
    for _ in range(2):
        start = time.perf_counter()
        assert run(), "the wide table should pass its suite"
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main(stack: object = None) -> None:
    import great_expectations  # noqa: F401  (imported before the clocks start: every run pays it once)

    from tasks.validation import validate_frame

    frame, ds = _wide()
    print(f"{len(frame):,} rows x {len(frame.columns)} columns, validated twice each way ...", flush=True)
    with tempfile.TemporaryDirectory() as ours, tempfile.TemporaryDirectory() as theirs:
        first, again = _twice(lambda: validate_frame(frame, ds, Path(ours)).passed)
        print(f"  Tollgate: {first:.1f} s, then {again:.1f} s", flush=True)
        base_first, base_again = _twice(lambda: _gx_add_or_update(frame, ds, Path(theirs)))
        print(f"  GX add_or_update: {base_first:.1f} s, then {base_again:.1f} s", flush=True)
    figures = {
        "validation_165_cols_s": again,
        "validation_165_cols_first_s": first,
        "validation_165_cols_gx_add_or_update_s": base_again,
        "validation_165_cols_ratio": again / base_again,
    }
    print(f"  ratio {figures['validation_165_cols_ratio']:.2f} (Tollgate's later run / GX add_or_update's)")
    record_results(figures)
