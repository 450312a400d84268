"""Messages people read, each as they should be (issue 33.4)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.rollout import not_picked_up
from tasks.validation import validate_frame
from tests.helpers import ROOT, small_dataset_config
from tollgate.app.commands.monitor import _value
from tollgate.app.commands.rollout import deployed_line


def test_a_wrong_dtype_counts_and_shows_only_the_values_that_do_not_fit(tmp_path: Path) -> None:
    frame = pd.read_parquet(ROOT / "data" / "snapshot.parquet").head(40)
    frame["usage_gb"] = frame["usage_gb"].astype(object)
    frame.loc[[3, 7], "usage_gb"] = ["lots", "n/a"]
    report = validate_frame(frame, small_dataset_config(), tmp_path / "gx")
    (failure,) = [f for f in report.failures if f.column == "usage_gb" and f.expectation.endswith("type_list")]
    assert failure.unexpected_count == 2 and failure.examples == ["lots", "n/a"], failure
    assert "values that are not float" in failure.observed


def test_numbers_stored_as_text_are_said_to_be_so(tmp_path: Path) -> None:
    frame = pd.read_parquet(ROOT / "data" / "snapshot.parquet").head(40)
    frame["usage_gb"] = frame["usage_gb"].astype(str)
    report = validate_frame(frame, small_dataset_config(), tmp_path / "gx")
    (failure,) = [f for f in report.failures if f.column == "usage_gb" and f.expectation.endswith("type_list")]
    assert "every value is string that would read as float" in failure.observed


def test_counts_print_whole_and_metrics_to_four_digits() -> None:
    assert _value(12470.0) == "12470" and _value(0.812345) == "0.8123" and _value(float("nan")) == "-"


def test_a_first_deploy_says_so() -> None:
    first = deployed_line({"version": "1", "replaced": "", "approved_by": "alice"})
    assert first == "v1 is Production (the first release: nothing replaced; approved by alice)"
    assert "replaced v1;" in deployed_line({"version": "2", "replaced": "1", "approved_by": "bob"})


def test_a_gateway_serving_another_model_is_named() -> None:
    said = not_picked_up("churn", "http://127.0.0.1:8000", "shadow", "3", {"model": "wine", "champion": "1"})
    assert "serves model 'wine', not 'churn'" in said
    same = not_picked_up(
        "churn", "u", "canary", "3", {"model": "churn", "champion": "2", "challenger": None, "mode": "off"}
    )
    assert "champion v2, challenger none (off)" in same
