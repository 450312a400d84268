"""The unit tier stays seconds (issue 31): this runs after every other test (tests/suite_guard.py orders it last)
and fails naming each tests/unit file whose tests averaged more than UNIT_BUDGET_S in this run. A unit test that
needs servers, training or a subprocess belongs in tests/integration."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.suite_guard import UNIT_BUDGET_S, unit_file_averages

UNIT = Path(__file__).parent


def test_each_unit_file_stays_within_its_budget() -> None:
    averages = {f: v for f, v in unit_file_averages().items() if not f.endswith(Path(__file__).name)}
    if not averages:
        pytest.skip("no other unit test ran in this session")
    over = {f: v for f, v in averages.items() if v[0] > UNIT_BUDGET_S}
    assert not over, "unit files over their budget of {:.1f} s per test on average: {}".format(
        UNIT_BUDGET_S, "; ".join(f"{f}: {avg:.2f} s x {n} tests" for f, (avg, n) in sorted(over.items()))
    )
