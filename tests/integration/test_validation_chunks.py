"""Validation of a file in chunks (dataset.validate_chunk_rows) against the same file validated whole, with real
Great Expectations runs and Data Docs: the failures, counts and summary are the file's, and a valid file keeps its
conformed table. Here, not in tests/unit: each case runs Great Expectations twice over a file (~10 s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.helpers import small_dataset_config, small_frame


def _faulty_table(tmp_path: Path, fmt: str) -> Path:
    """600 rows with faults spread over chunks of 100: nulls packed into one chunk (over the limit there, within
    it for the file), out-of-range and out-of-set values in two chunks, an id shared across chunks, a non-whole
    value in an int column."""
    frame = small_frame(600)
    frame.loc[0:39, "monthly_charges"] = np.nan  # 40/600 = 0.067 > 0.02: fails for the file
    frame.loc[200:224, "total_charges"] = np.nan  # 25/600 = 0.042 <= 0.05: passes for the file (not per chunk)
    frame.loc[[150, 420], "tenure_months"] = [300, 999]
    frame.loc[[10, 550], "plan"] = "platinum"
    frame.loc[480, "customer_id"] = frame.loc[5, "customer_id"]
    frame["support_calls_90d"] = frame["support_calls_90d"].astype("float64")
    frame.loc[333, "support_calls_90d"] = 2.5
    path = tmp_path / f"faulty.{fmt}"
    frame.to_parquet(path) if fmt == "parquet" else frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_file_validated_in_chunks_gives_the_whole_files_failures(tmp_path: Path, fmt: str) -> None:
    from tasks.validation import validate_file

    path = _faulty_table(tmp_path, fmt)
    ds = small_dataset_config(min_rows=1000)  # the row count fails too: judged on the file, not on a chunk
    whole_frame, whole = validate_file(path, ds, tmp_path / "gx-whole")
    chunked_frame, chunked = validate_file(
        path, ds.model_copy(update={"validate_chunk_rows": 100}), tmp_path / "gx-chunks", keep=False
    )

    def seen(report: Any) -> list[tuple[Any, ...]]:
        return [(f.column, f.expectation, f.observed, f.unexpected_count, f.examples) for f in report.failures]

    assert seen(chunked) == seen(whole)
    assert chunked.summary() == whole.summary().replace(str(whole.source), str(chunked.source))
    assert (chunked.rows, chunked.expectations) == (whole.rows, whole.expectations) == (600, whole.expectations)
    assert chunked_frame is None and whole_frame is not None
    assert any("validated in 6 chunks of at most 100 rows" in n for n in chunked.notes), chunked.notes
    failed = {(f.column, f.expectation) for f in whole.failures}
    for expected in [
        (None, "expect_table_row_count_to_be_between"),
        ("monthly_charges", "expect_column_values_to_not_be_null"),
        ("tenure_months", "expect_column_values_to_be_between"),
        ("plan", "expect_column_values_to_be_in_set"),
        ("customer_id", "expect_column_values_to_be_unique"),
        ("support_calls_90d", "conform_to_declared_type"),
    ]:
        assert expected in failed, whole.summary()
    assert ("total_charges", "expect_column_values_to_not_be_null") not in failed


def test_a_valid_file_in_chunks_passes_and_keeps_the_conformed_table(tmp_path: Path) -> None:
    from tasks.validation import validate_file

    path = tmp_path / "ok.parquet"
    small_frame(450).to_parquet(path)
    ds = small_dataset_config()
    whole_frame, whole = validate_file(path, ds, tmp_path / "gx-whole")
    frame, chunked = validate_file(path, ds.model_copy(update={"validate_chunk_rows": 100}), tmp_path / "gx-chunks")
    assert whole.passed and chunked.passed, chunked.summary()
    assert chunked.summary() == whole.summary()
    assert frame is not None and whole_frame is not None
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), whole_frame.reset_index(drop=True))
