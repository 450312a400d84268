"""`tollgate drift` and `tollgate backfill` refuse a bad window before they ask the stack anything: a UserError
(exit 2) naming the option."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from tollgate.app.commands.base import UserError
from tollgate.app.commands.monitor import backfill, drift
from tollgate.context import make_context

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pipeline.yaml"
DRIFT = {"window": None, "since": None, "until": None, "by": "prediction-time", "fail_on_drift": False, "json": False}
BACKFILL = {"path": "labels.csv", "every": None, "chunks": None, "by": "prediction-time", "json": False}


@pytest.mark.parametrize(
    ("command", "options", "phrase"),
    [
        (drift, {**DRIFT, "since": "yesterday"}, "--since: not a time: 'yesterday'"),
        (drift, {**DRIFT, "since": "2026-01-02", "until": "2026-01-01"}, "must be later than --since"),
        (backfill, {**BACKFILL, "every": "hourly"}, "--every: not a window length: 'hourly'"),
        (backfill, {**BACKFILL, "every": "1h", "chunks": 3}, "give one"),
        (backfill, {**BACKFILL, "chunks": 0}, "--chunks must be at least 1"),
    ],
)
def test_a_bad_window_is_a_usage_error_naming_the_option(command: Any, options: dict[str, Any], phrase: str) -> None:
    ctx = make_context(str(CONFIG), "dev")
    with pytest.raises(UserError) as err:
        command(ctx, argparse.Namespace(**options))
    assert phrase in str(err.value)
