"""The unit tier stays seconds (issue 31): this runs after every other test (tests/suite_guard.py orders it last)
and fails naming each tests/unit file whose tests averaged more than UNIT_BUDGET_S in this run. A unit test that
needs servers, training or a subprocess belongs in tests/integration. Under pytest-xdist a worker sees only its
own tests and shares the CPU with the other worker, so there the controller only prints the check (tests/suite_guard.py);
`make test-unit` and `make test-fast` (serial) enforce it."""

from __future__ import annotations

import os

import pytest

from tests.suite_guard import over_budget, unit_file_averages


def test_each_unit_file_stays_within_its_budget() -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("a worker sees only its own tests: the xdist controller prints the budget check at the end")
    if not [f for f in unit_file_averages() if "test_unit_budget" not in f]:
        pytest.skip("no other unit test ran in this session")
    why = over_budget()
    assert why is None, why
