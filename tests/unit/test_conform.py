"""Types as users have them: each documented coercion, and each value that must not be coerced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tasks.conform import conform
from tasks.validation import conform_and_validate
from tests.helpers import small_dataset_config, small_frame
from tollgate.config import ColumnSpec, DatasetConfig


def _with(ds: DatasetConfig, column: str, **spec: object) -> DatasetConfig:
    cols = dict(ds.columns)
    cols[column] = cols[column].model_copy(update=spec)
    return ds.model_copy(update={"columns": cols})


def test_a_float_label_of_zeros_and_ones_is_read_as_int() -> None:
    frame = small_frame().assign(churned=lambda f: f["churned"].astype("float64"))
    out, done, rejected = conform(frame, small_dataset_config())
    assert out["churned"].dtype == np.int64 and (out["churned"] == frame["churned"]).all()
    assert [c.column for c in done] == ["churned"] and not rejected


@pytest.mark.parametrize("dtype", ["bool", "Int64", "float32"])
def test_other_binary_label_dtypes_are_read_as_int(dtype: str) -> None:
    frame = small_frame().assign(churned=lambda f: f["churned"].astype(dtype))
    out, _, _ = conform(frame, small_dataset_config())
    assert out["churned"].dtype == np.int64 and out["churned"].tolist() == small_frame()["churned"].tolist()


@pytest.mark.parametrize("dtype", ["object", "string", "category"])
def test_a_label_stored_as_text_0_1_is_read_as_int(tmp_path: Path, dtype: str) -> None:
    """Issue 33: binary labels stored as text '0'/'1' (CSV exports, string columns) failed validation."""
    frame = small_frame().assign(churned=lambda f: f["churned"].astype(str).astype(dtype))
    out, report = conform_and_validate(frame, small_dataset_config(), tmp_path / "gx")
    assert report.passed, report.summary()
    assert out["churned"].dtype == np.int64 and out["churned"].tolist() == small_frame()["churned"].tolist()
    assert f"churned: label: {dtype} values read as the classes [0, 1]" in report.coercions


def test_a_text_label_with_other_values_is_left_for_the_suite_to_name(tmp_path: Path) -> None:
    frame = small_frame().assign(churned=lambda f: f["churned"].astype(str))
    frame.loc[frame.index[0], "churned"] = "yes"
    out, report = conform_and_validate(frame, small_dataset_config(), tmp_path / "gx")
    assert out["churned"].dtype == object  # no value was changed
    assert not report.passed and any(f.column == "churned" for f in report.failures)


def test_a_label_with_other_values_is_left_for_the_suite_to_name(tmp_path: Path) -> None:
    frame = small_frame().assign(churned=lambda f: f["churned"].astype("float64"))
    frame.loc[frame.index[0], "churned"] = 0.5
    out, report = conform_and_validate(frame, small_dataset_config(), tmp_path / "gx")
    assert out["churned"].dtype == np.float64  # no value was changed
    assert not report.passed and any(f.column == "churned" for f in report.failures)


def test_whole_number_floats_are_accepted_for_int_columns(tmp_path: Path) -> None:
    frame = small_frame().assign(tenure_months=lambda f: f["tenure_months"].astype("float64"))
    out, report = conform_and_validate(frame, small_dataset_config(), tmp_path / "gx")
    assert report.passed, report.summary()
    assert out["tenure_months"].dtype == np.int64
    assert "tenure_months: int: whole-number float64 as int64" in report.coercions


def test_non_whole_floats_in_an_int_column_are_rejected_naming_the_rows(tmp_path: Path) -> None:
    frame = small_frame().assign(tenure_months=lambda f: f["tenure_months"].astype("float64"))
    frame.loc[frame.index[[3, 7]], "tenure_months"] = 2.5
    _, report = conform_and_validate(frame, small_dataset_config(), tmp_path / "gx")
    failure = next(f for f in report.failures if f.expectation == "conform_to_declared_type")
    assert failure.column == "tenure_months" and failure.examples == ["row 3", "row 7"]


def test_nullable_integers_with_nulls_stay_nullable() -> None:
    ds = _with(small_dataset_config(), "support_calls_90d", max_null_fraction=0.5)
    frame = small_frame().assign(support_calls_90d=lambda f: f["support_calls_90d"].astype("float64"))
    frame.loc[frame.index[:4], "support_calls_90d"] = np.nan
    out, done, rejected = conform(frame, ds)
    assert str(out["support_calls_90d"].dtype) == "Int64" and out["support_calls_90d"].isna().sum() == 4
    assert not rejected and done[0].to_dtype == "Int64"


@pytest.mark.parametrize("dtype", ["category", "string", "string[pyarrow]"])
def test_pandas_category_and_string_dtypes_are_read_as_text(tmp_path: Path, dtype: str) -> None:
    frame = small_frame().assign(
        region=lambda f: f["region"].astype(dtype), customer_id=lambda f: f["customer_id"].astype(dtype)
    )
    out, report = conform_and_validate(frame, small_dataset_config(), tmp_path / "gx")
    assert report.passed, report.summary()
    assert out["region"].tolist() == small_frame()["region"].tolist()


@pytest.mark.parametrize(
    ("fmt", "values", "first"),
    [
        ("year", [2019, 2020, 2021], "2019-01-01 00:00:00"),
        ("epoch_s", [1_700_000_000, 1_700_000_060, 1_700_000_120], "2023-11-14 22:13:20"),
        ("epoch_ms", [1_700_000_000_000, 1_700_000_060_000, 1_700_000_120_000], "2023-11-14 22:13:20"),
    ],
)
def test_timestamps_in_declared_numeric_formats(tmp_path: Path, fmt: str, values: list[int], first: str) -> None:
    ds = _with(small_dataset_config(), "event_time", format=fmt)
    frame = small_frame(rows=30)
    frame["event_time"] = np.resize(np.asarray(values), len(frame))
    out, report = conform_and_validate(frame, ds, tmp_path / "gx")
    assert report.passed, report.summary()
    assert str(out["event_time"].iloc[0]) == first


def test_numeric_timestamps_without_a_format_are_rejected(tmp_path: Path) -> None:
    frame = small_frame(rows=30).assign(event_time=2020)
    _, report = conform_and_validate(frame, small_dataset_config(), tmp_path / "gx")
    assert any(f.column == "event_time" for f in report.failures)


def test_format_is_only_for_timestamp_columns() -> None:
    with pytest.raises(ValidationError, match="'format' is only for timestamp columns"):
        ColumnSpec(type="int", format="year")


def test_a_frame_that_needs_nothing_is_not_copied() -> None:
    frame = small_frame()
    out, done, rejected = conform(frame, small_dataset_config())
    assert out is frame and not done and not rejected


@pytest.mark.parametrize("value", ["gold", "São Paulo", "50% off", "a/b + c", "€ 1.000", "x" * 300, " "])
def test_any_segment_value_makes_a_key_mlflow_accepts(value: str) -> None:
    from mlflow.utils.validation import _validate_metric_name

    from tollgate.keys import key_part, segment_key

    key = segment_key("region name", value, "auc")
    _validate_metric_name(key)  # raises MlflowException on a key the tracking server would reject
    assert len(key) <= 250 and key_part(value) == key_part(value)  # stable
    assert (key_part(value) == value) == (value == "gold")  # safe values stay readable, the rest get a hash


def test_serving_data_without_the_label_validates_against_the_serving_suite(tmp_path: Path) -> None:
    from tasks.validation import validate_file

    path = tmp_path / "incoming.parquet"
    small_frame().drop(columns=["churned"]).to_parquet(path)
    _, auto = validate_file(path, small_dataset_config(), tmp_path / "gx")
    assert auto.passed, auto.summary()
    assert auto.suite_path.endswith("tollgate-serving.json")
    _, training = validate_file(path, small_dataset_config(), tmp_path / "gx", serving=False)
    assert not training.passed and "missing columns ['churned']" in training.summary()


def test_serving_suite_still_names_bad_values(tmp_path: Path) -> None:
    from tasks.validation import validate_file

    path = tmp_path / "incoming.csv"
    frame = small_frame().drop(columns=["churned"])
    frame.loc[frame.index[2], "region"] = "atlantis"
    frame.to_csv(path, index=False)
    _, report = validate_file(path, small_dataset_config(), tmp_path / "gx", serving=True)
    assert not report.passed and "['atlantis']" in report.summary()
