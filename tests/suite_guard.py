"""What every pytest run reports and enforces about itself (issue 31).

- At the end: the 25 slowest tests (setup + call + teardown) and each tier's total, so a slow test is seen the day
  it lands (pytest's own `--durations` table, per phase, is printed above it).
- The unit tier's budget: in a serial run (`make test-unit`, `make test-fast`) `tests/unit/test_unit_budget.py`
  (ordered last) fails naming any tests/unit file whose tests average more than UNIT_BUDGET_S. Under pytest-xdist
  (`make test`, two workers) the controller prints the same check as a warning and does not fail: there a unit test
  shares the CPU with the other worker's integration tests and may pay the worker's first import of MLflow or GX
  (a one-test file measured 3.7 s that way), so the figure is no fair measure of the file.
- Nothing outlives the suite: every process this run started (workers included) carries TOLLGATE_TEST_SESSION
  in its environment; after every teardown (stacks down) any such process still alive fails the run, named, and
  is killed so it cannot slow the next run. Under xdist this runs in the controller, after the workers ended.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import defaultdict

import psutil
import pytest

SESSION_MARK = "TOLLGATE_TEST_SESSION"
UNIT_BUDGET_S = 2.0  # average seconds per test, per file of tests/unit (the slowest file averages ~0.6 s on
# a quiet 2-core machine; the headroom is for a loaded CI machine)
SLOWEST = 25
LEAK_GRACE_S = 10.0  # processes told to stop get this long to exit before they count as leaked

os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)
_MARK = os.environ[SESSION_MARK]

# nodeid -> seconds (setup + call + teardown); filled as reports arrive
durations: dict[str, float] = defaultdict(float)
_state: dict[str, pytest.Session] = {}


def tier(nodeid: str) -> str:
    """tests/unit/x.py::t -> 'unit' (the folder under tests/), else 'other'."""
    parts = nodeid.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"


def unit_file_averages() -> dict[str, tuple[float, int]]:
    """Per tests/unit file run so far: (average seconds per test, number of tests)."""
    per_file: dict[str, list[float]] = defaultdict(list)
    for nodeid, seconds in durations.items():
        if tier(nodeid) == "unit":
            per_file[nodeid.split("::")[0]].append(seconds)
    return {f: (sum(s) / len(s), len(s)) for f, s in per_file.items()}


def over_budget() -> str | None:
    """The unit files over UNIT_BUDGET_S per test on average, as one line, or None."""
    over = {f: v for f, v in unit_file_averages().items() if v[0] > UNIT_BUDGET_S and "test_unit_budget" not in f}
    if not over:
        return None
    return "unit files over their budget of {:.1f} s per test on average: {}".format(
        UNIT_BUDGET_S, "; ".join(f"{f}: {avg:.2f} s x {n} tests" for f, (avg, n) in sorted(over.items()))
    )


def is_worker(config: pytest.Config) -> bool:
    """True in a pytest-xdist worker (the controller gets every worker's reports)."""
    return hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    _state["session"] = session


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: every test under tests/unit (added by tests/suite_guard.py)")
    config.addinivalue_line(
        "markers", "smoke: the one end-to-end path `make test-fast` runs (train -> deploy -> predict, bundled data)"
    )


# The order files are handed to xdist workers in (`make test` runs `--dist loadfile --no-loadscope-reorder`): the
# longest first, so the end of a run is short unit files filling the gaps, not one 3-minute end-to-end path
# running alone on one core while the other idles. (xdist's default orders files by how many tests they hold,
# which put every single-test end-to-end path last: in a 33-minute run the last 7% of tests took 14 minutes.)
# Seconds per file on a 2-core machine (the run of 2026-12-07): the files known to be long, else their tier's.
FILE_SECONDS = {
    "tests/integration/test_rollout_controller.py": 550.0,
    "tests/integration/test_rollout.py": 330.0,
    "tests/scale/test_postgres_s3.py": 330.0,
    "tests/integration/test_monitoring.py": 150.0,
    "tests/integration/test_alerts.py": 150.0,
    "tests/integration/test_stack.py": 120.0,
}
TIER_SECONDS = {"e2e": 200.0, "scale": 20.0, "integration": 30.0, "unit": 1.0}


@pytest.hookimpl(tryfirst=True)  # before -m deselects: `make test-fast` selects "unit or smoke"
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks tests/unit as `unit`; orders files longest first (FILE_SECONDS, else TIER_SECONDS; name order among
    equals); the unit budget check runs after every other test, so it sees their durations."""
    for item in items:
        if tier(item.nodeid) == "unit":
            item.add_marker(pytest.mark.unit)
    items.sort(
        key=lambda item: (
            item.nodeid.startswith("tests/unit/test_unit_budget.py"),
            -FILE_SECONDS.get(item.nodeid.split("::")[0], TIER_SECONDS.get(tier(item.nodeid), 0.0)),
        )
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    durations[report.nodeid] += report.duration


def _leaked() -> list[psutil.Process]:
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(SESSION_MARK) == _MARK and not _ends_with_me(proc, me):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _ends_with_me(proc: psutil.Process, me: int) -> bool:
    """multiprocessing's resource tracker of this very process (a Dask LocalCluster started in process leaves one):
    it exits when this process does, so it is no leak. Under xdist the workers' trackers ended with them."""
    return proc.ppid() == me and "multiprocessing.resource_tracker" in " ".join(proc.cmdline())


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid}"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Runs after every sessionfinish (the stacks are down): the time table, the unit budget when workers ran the
    tests, then the leak check."""
    write = terminalreporter.write_line
    session = _state.get("session")
    if is_worker(terminalreporter.config):
        return
    if getattr(terminalreporter.config.option, "numprocesses", None) and (why := over_budget()):
        terminalreporter.section("unit budget (a warning beside other workers; `make test-unit` enforces it)")
        write(why, yellow=True)
    if durations:
        terminalreporter.section(f"{SLOWEST} slowest tests (setup + call + teardown)")
        for nodeid, seconds in sorted(durations.items(), key=lambda kv: -kv[1])[:SLOWEST]:
            write(f"{seconds:8.1f} s  {nodeid}")
        terminalreporter.section("time per tier")
        totals: dict[str, list[float]] = defaultdict(list)
        for nodeid, seconds in durations.items():
            totals[tier(nodeid)].append(seconds)
        for name, values in sorted(totals.items()):
            write(f"{name:<12} {sum(values):8.1f} s  ({len(values)} tests)")
        write(f"{'all':<12} {sum(durations.values()):8.1f} s")
    deadline = time.monotonic() + LEAK_GRACE_S
    leaked = _leaked()
    while leaked and time.monotonic() < deadline:
        time.sleep(0.5)
        leaked = [p for p in leaked if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if leaked:
        terminalreporter.section("processes the suite started and left running", red=True)
        for proc in leaked:
            write(_describe(proc), red=True)
            with contextlib.suppress(psutil.Error):
                proc.kill()
        write(f"{len(leaked)} leaked process(es), now killed: the run fails", red=True)
        if session is not None:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
