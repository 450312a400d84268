"""scikit-learn's wine table (multiclass: a CSV file with the cultivars' names as classes and ISO-text times) from `config check` to an automatic retrain on the worker, through
the CLI as a user runs it (tests/e2e/sklearn_path.py). Slow (~1.5-2.5 min): it is the whole loop, each step a
process of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.sklearn_path import user_path


def test_user_table_from_config_check_to_monitored_production(
    live_stack: dict[str, str], tmp_path: Path, record_property: Any
) -> None:
    user_path("wine", live_stack, tmp_path, record_property)
