"""The rollout controller's pure decisions (tasks/controller.py): heartbeat cadence, phase, controller liveness,
the refusal line and what counts as orphaned."""

from __future__ import annotations

import pytest

from tasks.controller import Rollout, beat_interval, controller_state, model_tag, phase_of, refusal
from tollgate import procs
from tollgate.registry import ROLLOUT_MODE_TAG, ROLLOUT_SHARE_TAG


@pytest.mark.parametrize(("lease_s", "beat"), [(60, 5.0), (8, 2.0), (2, 1.0), (0.5, 1.0), (12, 3.0)])
def test_beat_is_a_quarter_of_the_lease_within_1_to_5_s(lease_s: float, beat: float) -> None:
    assert beat_interval(lease_s) == beat


@pytest.mark.parametrize(
    ("state", "tags", "expected"),
    [
        ("RUNNING", {}, ("preparing", 0.0)),
        ("RUNNING", {ROLLOUT_MODE_TAG: "shadow", ROLLOUT_SHARE_TAG: "0.0"}, ("shadow", 0.0)),
        ("RUNNING", {ROLLOUT_MODE_TAG: "canary", ROLLOUT_SHARE_TAG: "0.2"}, ("canary", 0.2)),
        ("PAUSED", {ROLLOUT_MODE_TAG: "canary", ROLLOUT_SHARE_TAG: "0.2"}, ("approval", 0.2)),
        ("PAUSED", {}, ("approval", 0.0)),
        ("RUNNING", {ROLLOUT_MODE_TAG: "off", ROLLOUT_SHARE_TAG: "0.2"}, ("preparing", 0.0)),
    ],
)
def test_phase_of_a_live_run(state: str, tags: dict[str, str], expected: tuple[str, float]) -> None:
    assert phase_of(state, tags) == expected


def test_controller_is_judged_by_its_process_not_its_record() -> None:
    me = procs.this_process()
    assert controller_state(None) == "unknown"
    assert controller_state(me) == "alive"
    assert controller_state({**me, "ticks": int(str(me["ticks"])) - 100}) == "gone"  # a reused pid
    # the same process seen a second off on the wall clock (boot time is recomputed from the clock on every read)
    assert controller_state({**me, "started": float(str(me["started"])) - 1.0}) == "alive"
    without_ticks = {k: v for k, v in me.items() if k != "ticks"}  # a record from another OS
    assert controller_state({**without_ticks, "started": float(str(me["started"])) - 1.0}) == "alive"
    assert controller_state({**without_ticks, "started": float(str(me["started"])) - 100}) == "gone"
    assert controller_state({**me, "host": "elsewhere"}) == "unknown"


def _rollout(controller: str, live: bool) -> Rollout:
    return Rollout("m", "2", "id-1", "brave-fox", "PAUSED", "approval", 0.2, 0.0, "http://ui/runs/flow-run/id-1",
                   controller, 3.0 if live else None, live)  # fmt: skip


@pytest.mark.parametrize(
    ("controller", "live", "orphaned"),
    [("gone", True, True), ("gone", False, False), ("alive", True, False), ("unknown", True, False)],
)
def test_orphaned_means_no_controller_and_a_live_challenger(controller: str, live: bool, orphaned: bool) -> None:
    assert _rollout(controller, live).orphaned is orphaned


def test_refusal_is_one_line_naming_run_version_phase_since_and_cancel() -> None:
    line = refusal("m", _rollout("alive", True))
    assert "\n" not in line
    for part in ("v2", "approval", "since 1970-01-01T00:00:00Z", "brave-fox", "tollgate rollout cancel 2"):
        assert part in line
    assert model_tag("churn") == "tollgate-model:churn"


def test_the_flow_run_on_the_worker_gets_the_terminals_config_overrides_only() -> None:
    from tollgate.app.worker_runs import config_overrides

    environ = {"TOLLGATE__ROLLOUT__LEASE_S": "8", "TOLLGATE_HOME": "/x", "PATH": "/bin", "TOLLGATE__A__B": "1"}
    assert config_overrides(environ) == {"TOLLGATE__ROLLOUT__LEASE_S": "8", "TOLLGATE__A__B": "1"}
