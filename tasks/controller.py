"""The controller of a rollout: the process that runs a deploy_model flow run (issue 34).

- One rollout per model: a run claims its model (a Prefect tag on the run, and a record naming its process) and
  fails before it touches the gateway while another live run holds the model. "Live" is read from real state: the
  Prefect run's state and whether the process that controls it still runs (pid + start time; a record left
  behind by a killed process counts as gone, never as a lock).
- The heartbeat: for the whole run, the approval pause included, a thread renews the challenger's lease every few
  seconds for rollout.lease_s, so a challenger outlives a dead controller by lease_s at most.
- Cancellation: `tollgate rollout cancel` sets the run Cancelled and stops the challenger itself; the controller
  sees it at its next poll or beat and ends without touching the gateway or the registry again.
"""

from __future__ import annotations

import ctypes
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect.exceptions import Abort

from tasks.common import run_logger
from tasks.rollout import RolloutFailed, renew_lease
from tollgate import procs
from tollgate.context import Context
from tollgate.gateway_client import GatewayError
from tollgate.registry import ROLLOUT_MODE_TAG, ROLLOUT_OUTCOME_TAG, ROLLOUT_SHARE_TAG

DEPLOY_FLOW = "deploy_model"
LIVE_STATES = ("PENDING", "RUNNING", "PAUSED", "CANCELLING")
MIN_BEAT_S, MAX_BEAT_S = 1.0, 5.0


class RolloutInFlight(RolloutFailed):
    """Another rollout of the same model is in flight; nothing was touched."""


class RolloutCancelled(Abort):
    """The run was cancelled (`tollgate rollout cancel`): the controller stops and touches nothing.

    An Abort, so Prefect keeps the run's Cancelled state instead of reporting it Failed."""

    def __init__(self, message: str = "the rollout was cancelled (`tollgate rollout cancel`)"):
        super().__init__(message)


def model_tag(model: str) -> str:
    """The tag a deploy_model run carries for the registered model it rolls out."""
    return f"tollgate-model:{model}"


def beat_interval(lease_s: float) -> float:
    """Seconds between lease renewals: a quarter of the lease (so three beats may fail before it lapses), within
    [1, 5] s."""
    return min(max(lease_s / 4, MIN_BEAT_S), MAX_BEAT_S)


@dataclass(frozen=True)
class Rollout:
    """A deploy_model run in a live Prefect state, as `rollout status` and the refusals show it."""

    model: str
    version: str
    flow_run_id: str
    flow_run: str  # its name
    state: str  # Prefect's state type: RUNNING, PAUSED, ...
    phase: str  # preparing | shadow | canary | approval
    share: float  # of entities the challenger answers (canary), 0 otherwise
    since: float  # epoch seconds the run started
    url: str
    controller: str  # alive | gone | unknown (another host, or not recorded yet)
    lease_left_s: float | None  # on the gateway, while it serves this version as challenger
    challenger_live: bool  # the gateway serves this version as shadow/canary now

    @property
    def orphaned(self) -> bool:
        """The controller is gone and its challenger still answers or scores traffic."""
        return self.controller == "gone" and self.challenger_live

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "since": _utc(self.since), "orphaned": self.orphaned}


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def refusal(model: str, other: Rollout) -> str:
    """The one line a second deploy of `model` is refused with (the CLI and the flow say the same)."""
    return (
        f"refused: {model} already has a rollout in flight: v{other.version} in {other.phase} since "
        f"{_utc(other.since)} (flow run {other.flow_run}, {other.url}); wait for it to end or cancel it with "
        f"`tollgate rollout cancel {other.version}`"
    )


def phase_of(state: str, tags: dict[str, str]) -> tuple[str, float]:
    """(phase, traffic share) of a live run from its Prefect state type and its version's rollout tags."""
    mode = tags.get(ROLLOUT_MODE_TAG, "off")
    share = float(tags.get(ROLLOUT_SHARE_TAG) or 0.0) if mode == "canary" else 0.0
    if state == "PAUSED":
        return "approval", share
    return (mode, share) if mode in ("shadow", "canary") else ("preparing", 0.0)


def controller_state(record: dict[str, Any] | None) -> str:
    """alive | gone | unknown for a run's controller record (None: none written)."""
    if record is None:
        return "unknown"
    same = procs.same_process(record)
    return "unknown" if same is None else "alive" if same else "gone"


# -- the record of the controlling process --------------------------------------------------------------------
def _record_path(ctx: Context, flow_run_id: str) -> Path:
    return ctx.paths.rollout_controllers / f"{flow_run_id}.json"


def _read_record(ctx: Context, flow_run_id: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(_record_path(ctx, flow_run_id).read_text()))
    except (OSError, ValueError):
        return None


# -- Prefect --------------------------------------------------------------------------------------------------
def _live_runs(model: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return list(
            client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[DEPLOY_FLOW])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in LIVE_STATES])),
                    tags=FlowRunFilterTags(all_=[model_tag(model)]),
                ),
                sort=FlowRunSort.START_TIME_DESC,
                limit=50,
            )
        )


def _state_type(run: Any) -> str:
    return str(getattr(run.state.type, "value", run.state.type)) if run.state else "UNKNOWN"


def run_cancelled(flow_run_id: str) -> bool:
    """Whether the flow run was cancelled (Cancelling or Cancelled on the Prefect server)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return _state_type(client.read_flow_run(UUID(flow_run_id))) in ("CANCELLING", "CANCELLED")


def stop_if_cancelled(flow_run_id: str | None) -> None:
    """Raise RolloutCancelled when this run was cancelled (nothing to check outside a flow run)."""
    if flow_run_id and run_cancelled(flow_run_id):
        raise RolloutCancelled()


def rollouts_in_flight(ctx: Context) -> list[Rollout]:
    """The model's deploy_model runs in a live Prefect state, newest first, with phase, lease and controller; and
    the gateway's challenger when no live run holds it (controller gone: an orphan until its lease lapses)."""
    model = ctx.config.project.registered_model
    runs = _live_runs(model)
    gateway = ctx.gateway()
    try:
        served: dict[str, Any] = gateway.state()
    except GatewayError:
        served = {}
    finally:
        gateway.close()
    out = []
    for run in runs:
        version, state = str(run.parameters.get("version", "")), _state_type(run)
        try:
            tags = ctx.registry.get(version).tags
        except Exception:  # a version that is not there: the run fails on its own
            tags = {}
        phase, share = phase_of(state, tags)
        live = served.get("challenger") == version and served.get("mode") in ("shadow", "canary")
        started = run.start_time or run.expected_start_time or run.created
        out.append(
            Rollout(
                model=model,
                version=version,
                flow_run_id=str(run.id),
                flow_run=str(run.name),
                state=state,
                phase=phase,
                share=float(served.get("share") or share) if live else share,
                since=started.timestamp() if started else time.time(),
                url=f"{ctx.config.servers.prefect_ui_url}/runs/flow-run/{run.id}",
                controller=controller_state(_read_record(ctx, str(run.id))),
                lease_left_s=served.get("lease_left_s") if live else None,
                challenger_live=live,
            )
        )
    challenger = served.get("challenger")
    if challenger and served.get("mode") in ("shadow", "canary") and all(r.version != challenger for r in out):
        out.append(_unheld(ctx, str(challenger), served))
    return out


def _unheld(ctx: Context, version: str, served: dict[str, Any]) -> Rollout:
    """The gateway's challenger that no live run controls (its run crashed, was marked so, or is unknown): an
    orphan until its lease lapses. Names the model's latest deploy_model run of that version, if any."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    model = ctx.config.project.registered_model
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[DEPLOY_FLOW])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[model_tag(model)])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=20,
        )
    run = next((r for r in runs if str(r.parameters.get("version")) == version), None)
    started = (run.start_time or run.created) if run else None
    return Rollout(
        model=model,
        version=version,
        flow_run_id=str(run.id) if run else "",
        flow_run=str(run.name) if run else "-",
        state=_state_type(run) if run else "UNKNOWN",
        phase=str(served.get("mode")),
        share=float(served.get("share") or 0.0),
        since=started.timestamp() if started else time.time(),
        url=f"{ctx.config.servers.prefect_ui_url}/runs/flow-run/{run.id}" if run else "",
        controller="gone",
        lease_left_s=served.get("lease_left_s"),
        challenger_live=True,
    )


def _mark_crashed(flow_run_id: str, why: str) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(flow_run_id), Crashed(message=why), force=True)


def check_no_rollout(ctx: Context, this_run: str | None = None) -> None:
    """Raise RolloutInFlight when another live rollout of the model holds it; runs whose controller is gone are
    marked Crashed on the way (they can never act again)."""
    model = ctx.config.project.registered_model
    for other in rollouts_in_flight(ctx):
        if other.flow_run_id == this_run:
            continue
        if other.controller == "gone":
            if other.state in LIVE_STATES:  # never rewrite a final state
                _mark_crashed(other.flow_run_id, "its controlling process is gone")
            continue
        raise RolloutInFlight(refusal(model, other))


def _claim(ctx: Context, version: str, flow_run_id: str) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    path = _record_path(ctx, flow_run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**procs.this_process(), "version": version}))
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        client.update_flow_run(run.id, tags=sorted({*run.tags, model_tag(ctx.config.project.registered_model)}))


@contextmanager
def controlling(ctx: Context, version: str, flow_run_id: str | None) -> Iterator[None]:
    """Hold the model's rollout for this run: claim it (or raise RolloutInFlight, touching nothing), then renew
    the challenger's lease every beat_interval(lease_s) seconds until the run ends, the approval pause included.
    A cancelled run is stopped (RolloutCancelled) at the next beat, also while it is paused."""
    if flow_run_id is None:  # called outside a flow run (tests, benchmarks): nothing to claim or watch
        yield
        return
    _claim(ctx, version, flow_run_id)
    beat = Heartbeat(ctx, version, flow_run_id)
    try:
        check_no_rollout(ctx, flow_run_id)
        beat.start()
        yield
    except RolloutCancelled:
        raise RolloutCancelled(f"rollout of v{version} cancelled (flow run {flow_run_id})") from None
    finally:
        beat.stop()
        _record_path(ctx, flow_run_id).unlink(missing_ok=True)


class Heartbeat:
    """A thread that renews the lease for rollout.lease_s every beat and watches for cancellation; on it, it stops
    renewing and raises RolloutCancelled in the flow's thread (at its next Python instruction: within the
    approval pause's 10 s poll at most)."""

    def __init__(self, ctx: Context, version: str, flow_run_id: str):
        self.ctx, self.version, self.flow_run_id = ctx, version, flow_run_id
        self.owner = threading.get_ident()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease-heartbeat-v{version}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join(10)

    def _run(self) -> None:
        lease_s = self.ctx.config.rollout.lease_s
        gateway = self.ctx.gateway()
        try:
            while not self.done.wait(beat_interval(lease_s)):
                try:
                    if run_cancelled(self.flow_run_id):
                        self._interrupt_owner()
                        return
                except Exception as exc:  # the Prefect API may blink: the lease is what must not stop
                    run_logger().warning("could not read the state of flow run %s: %s", self.flow_run_id, exc)
                renew_lease(self.ctx, self.version, lease_s, gateway)
        finally:
            gateway.close()

    def _interrupt_owner(self) -> None:
        if self.done.is_set():
            return
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.owner), ctypes.py_object(RolloutCancelled))


def cancel_rollout(ctx: Context, version: str, reason: str, who: str) -> list[Rollout]:
    """Cancel the rollouts of `version` in flight: their runs Cancelled on the Prefect server (their controllers
    stop at their next beat), the challenger off in the registry and on the gateway at once, the ledger noting who
    and why. The version keeps its stage. Returns what was cancelled (nothing: nothing was in flight)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    mine = [r for r in rollouts_in_flight(ctx) if r.version == str(version)]
    if not mine:
        return []
    why = f"cancelled by {who}: {reason}"
    with get_client(sync_client=True) as client:
        for r in (r for r in mine if r.state in LIVE_STATES):  # first: no controller puts the challenger back
            client.set_flow_run_state(UUID(r.flow_run_id), Cancelled(message=why), force=True)
    stage = ctx.registry.get(version).stage
    ctx.registry.set_tags(version, {ROLLOUT_MODE_TAG: "off", ROLLOUT_OUTCOME_TAG: why[:500]})
    ctx.registry.record(
        version, stage, stage, f"rollout cancelled: {reason}", None, who=who, flow_run_id=mine[0].flow_run_id or None
    )
    gateway = ctx.gateway()
    try:
        gateway.reload()
    except GatewayError as exc:  # a gateway that is down reads the registry (mode off) when it starts
        run_logger().warning("could not reload the gateway after cancelling v%s: %s", version, exc)
    finally:
        gateway.close()
    return mine
