"""Commands that move releases: deploy (deploy_model), approve (a paused approval), rollback."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tollgate import approvers
from tollgate.app.commands.base import (
    EXIT_NO,
    EXIT_OK,
    JSON,
    CheckFailed,
    Command,
    UserError,
    arg,
    print_json,
    require_stack,
    table,
    warn,
)
from tollgate.app.commands.stack import ROLLOUT_COLUMNS
from tollgate.app.output import Phrase, library_output
from tollgate.context import Context
from tollgate.gateway_client import GatewayError


def _phase_starts(p: Mapping[str, Any]) -> str:
    what = f"{p['share']:.0%} of entities" if p["phase"] == "canary" else "scores traffic, answers nothing"
    return f"v{p['version']} -> {p['phase']} ({what}) ..."


def deploy_stages(ctx: Context) -> dict[str, Phrase]:
    """deploy_model's progress: a line as each of these tasks starts (from its parameters; output.Progress)."""
    return {
        "start_phase": _phase_starts,
        "wait_for_traffic": lambda p: f"{p['window'].phase}: waiting for {p['needed']} predictions ...",
        "analyze_phase": lambda p: f"{p['window'].phase} analysis ...",
        "promote_to_production": lambda p: f"v{p['version']} -> Production ...",
        "verify_release": lambda p: f"smoke test of v{p['version']} ...",
        "rollback_production": "restoring the previous release ...",
    }


def deploy(ctx: Context, args: argparse.Namespace) -> int:
    require_stack(ctx)
    from flows.deploy import deploy_model
    from tasks.controller import RolloutCancelled, RolloutInFlight, check_no_rollout
    from tasks.deployment import RolloutFailed
    from tollgate.registry import RegistryError

    try:
        check_no_rollout(ctx)
    except RolloutInFlight as exc:
        raise CheckFailed(str(exc)) from None
    from tollgate.app import worker_runs

    if args.in_terminal and args.no_follow:
        raise UserError("--in-terminal and --no-follow contradict: a rollout in this terminal ends with it")
    if not args.in_terminal:
        if not worker_runs.has_deployment(ctx):
            raise UserError(
                f"no deployment {worker_runs.deployment_name(ctx)} on the Prefect server for the worker to run the "
                "rollout: run `tollgate up` (it applies the project's deployments), or pass --in-terminal to run "
                "it in this terminal (it then stops when the terminal goes: its lease lapses)"
            )
        return _deploy_on_worker(ctx, args)
    warn("the rollout runs in this terminal (--in-terminal) and stops if the terminal goes (its lease lapses)")

    print(
        f"deploying {ctx.config.project.registered_model} v{args.version}: shadow -> canary -> approval -> "
        f"production (Prefect UI: {ctx.config.servers.prefect_ui_url})",
        flush=True,
    )
    try:
        with library_output(deploy_stages(ctx)):
            result = deploy_model(version=args.version, config=ctx)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    except RolloutInFlight as exc:  # another deploy claimed the model between the check above and the flow's
        raise CheckFailed(str(exc)) from None
    except RolloutCancelled as exc:
        raise CheckFailed(f"{exc}: the gateway serves the champion only, v{args.version} stays in Staging") from None
    except RolloutFailed as exc:
        raise CheckFailed(f"rollout of v{args.version} stopped: {exc}. Production is as it was before.") from None
    print(deployed_line(result))
    return EXIT_OK


def _hint(version: str) -> str:
    return f"follow it with `tollgate rollout follow {version}`, cancel it with `tollgate rollout cancel {version}`"


def _deploy_on_worker(ctx: Context, args: argparse.Namespace) -> int:
    """Start the rollout as a flow run of the project's deploy deployment; follow it unless --no-follow."""
    from tollgate.app import worker_runs

    run = worker_runs.start_run(ctx, args.version)
    url = worker_runs.run_url(ctx, str(run.id))
    print(
        f"deploying {ctx.config.project.registered_model} v{args.version} on the worker: shadow -> canary -> "
        f"approval -> production (flow run {run.name}: {url})",
        flush=True,
    )
    if args.no_follow:
        print(f"not following; {_hint(args.version)}")
        return EXIT_OK
    return follow_to_end(ctx, str(run.id), args.version)


def follow_to_end(ctx: Context, flow_run_id: str, version: str) -> int:
    """Print the run's logs until it ends; exit 0 when the version reached Production, 1 when the rollout
    stopped or was cancelled. Ctrl-C or a closed terminal only detach (exit 130): the run goes on."""
    import signal

    from tollgate.app import worker_runs

    def hang_up(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGHUP, hang_up)
    try:
        run = worker_runs.follow(flow_run_id, lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        warn(f"detached: the rollout of v{version} goes on on the worker; {_hint(version)}")
        return 130
    state = run.state
    prod = ctx.registry.one("Production")
    now = f"Production is {'v' + prod.version if prod else 'none'}"
    if state.is_completed():
        by = ctx.registry.get(version).tags.get("tollgate.approval.by", "?")
        print(f"v{version} is Production (approved by {by})")
        return EXIT_OK
    if state.is_cancelled():
        raise CheckFailed(f"rollout of v{version} was cancelled: {state.message}; {now}")
    raise CheckFailed(f"rollout of v{version} ended {state.name}: {state.message}; {now}")


def rollout_follow(ctx: Context, args: argparse.Namespace) -> int:
    require_stack(ctx)
    from tasks.controller import rollouts_in_flight

    mine = [r for r in rollouts_in_flight(ctx) if r.version == str(args.version)]
    if not mine:
        print(f"nothing to follow: no rollout of {ctx.config.project.registered_model} v{args.version} in flight")
        return EXIT_OK
    print(f"following flow run {mine[0].flow_run} ({mine[0].url}), v{args.version} in {mine[0].phase}", flush=True)
    return follow_to_end(ctx, mine[0].flow_run_id, args.version)


def deployed_line(result: dict[str, str]) -> str:
    """What `tollgate deploy` prints when the version reached Production."""
    replaced = f"replaced v{result['replaced']}" if result["replaced"] else "the first release: nothing replaced"
    return f"v{result['version']} is Production ({replaced}; approved by {result['approved_by']})"


def approver_secret(name: str) -> str:
    """The approver's secret: $TOLLGATE_APPROVER_SECRET, else a prompt (never echoed) when there is a terminal."""
    secret = os.environ.get(approvers.SECRET_ENV)
    if secret:
        return secret
    if not sys.stdin.isatty():
        raise UserError(f"no approver secret: set {approvers.SECRET_ENV} (no terminal to prompt on)")
    return getpass.getpass(f"approver secret for {name}: ")


def approve(ctx: Context, args: argparse.Namespace) -> int:
    require_stack(ctx)
    from tasks.approvals import ApprovalError, answer_approval

    secret = approver_secret(args.by)
    try:
        with library_output():
            outcome = answer_approval(ctx, args.version, args.by, secret, not args.reject, args.comment)
    except ApprovalError as exc:
        raise CheckFailed(str(exc)) from None
    print(outcome)
    return EXIT_OK


def _rollback_without_gateway(ctx: Context, args: argparse.Namespace, why: str) -> dict[str, Any]:
    """The rollback flow (registry + ledger); the gateway serves the release when it starts."""
    warn(
        f"gateway at {ctx.config.servers.gateway_url} is not reachable ({why}); rolling back through the "
        "rollback flow instead (the gateway will serve it when it starts)"
    )
    require_stack(ctx)
    from flows.rollback import rollback as rollback_flow
    from tollgate.registry import RegistryError

    try:
        with library_output(deploy_stages(ctx)):
            return rollback_flow(to_version=args.to, reason=args.reason, config=ctx)
    except RegistryError as exc:
        raise CheckFailed(f"refused: {exc}") from None


def rollback(ctx: Context, args: argparse.Namespace) -> int:

    from tollgate.ledger import current_actor

    start = time.perf_counter()
    gateway = ctx.gateway()
    try:
        result = gateway.rollback(args.to, args.reason, who=current_actor())
    except GatewayError as exc:
        if exc.status is not None:  # it answered, and said no
            raise _refusal(exc) from None
        if not exc.unreachable:
            # It may still be rolling back: rolling back again through the flow would go one release further.
            raise CheckFailed(f"no answer from the gateway ({exc}); see `tollgate history` for what happened") from None
        result = _rollback_without_gateway(ctx, args, str(exc))
    finally:
        gateway.close()
    took = time.perf_counter() - start
    served = "and the gateway serves it" if result.get("served") else "(gateway not updated)"
    print(f"rolled back: v{result['from']} -> v{result['to']} is Production {served}; {took:.2f} s")
    return EXIT_OK


def _refusal(exc: GatewayError) -> Exception:
    """A refused rollback is a check that said no (exit 1): 409 is a rollback rule or the target's smoke test
    (named in the answer), any other answer the gateway refusing (bad token, a failure)."""
    if exc.status != 409:
        return CheckFailed(f"gateway refused the rollback: {exc}")
    try:
        return CheckFailed(f"refused: {json.loads(exc.body).get('error', exc.body)}")
    except (ValueError, AttributeError):
        return CheckFailed(f"refused: {exc.body}")


def rollout_status(ctx: Context, args: argparse.Namespace) -> int:
    require_stack(ctx)
    from tasks.controller import rollouts_in_flight

    rollouts = rollouts_in_flight(ctx)
    if args.json:
        print_json([r.to_dict() for r in rollouts])
    elif not rollouts:
        print(f"no rollout of {ctx.config.project.registered_model} in flight")
    else:
        rows = [{**r.to_dict(), "share": f"{r.share:.0%}"} for r in rollouts]
        print(table(rows, ROLLOUT_COLUMNS))
        for line in orphan_lines(rollouts):
            print(line)
    return EXIT_NO if any(r.orphaned for r in rollouts) else EXIT_OK


def orphan_lines(rollouts: Sequence[Any]) -> list[str]:
    """One line per orphaned rollout (controller gone, challenger still live), saying what ends it."""
    return [
        f"ORPHANED: v{r.version} ({r.phase}) has no live controller; the gateway drops it when its lease lapses "
        f"(in {r.lease_left_s} s), or now with `tollgate rollout cancel {r.version}`"
        for r in rollouts
        if r.orphaned
    ]


def rollout_cancel(ctx: Context, args: argparse.Namespace) -> int:
    require_stack(ctx)
    from tasks.controller import cancel_rollout
    from tollgate.ledger import current_actor

    who = current_actor()
    with library_output():
        cancelled = cancel_rollout(ctx, args.version, args.reason, who)
    if not cancelled:
        print(f"nothing to cancel: no rollout of {ctx.config.project.registered_model} v{args.version} in flight")
        return EXIT_OK
    runs = ", ".join(r.flow_run for r in cancelled)
    print(
        f"cancelled the rollout of v{args.version} (flow run {runs}) as {who}: the gateway serves the champion "
        f"only, v{args.version} stays in its stage"
    )
    return EXIT_OK


COMMANDS = [
    Command(
        "deploy",
        "roll out VERSION: deploy_model (shadow -> canary -> approval -> production, automatic rollback on a "
        "failed smoke test) as a flow run of the project's deploy deployment on the worker (`tollgate up` applies "
        "it; refused without it), followed here (Ctrl-C only detaches); exit 1 if any phase says no, it is "
        "cancelled, or another rollout of the model is in flight",
        deploy,
        (
            arg("version", help="the Staging version to roll out"),
            arg("--no-follow", action="store_true", help="start the run on the worker and return with its URL"),
            arg(
                "--in-terminal",
                action="store_true",
                help="run the rollout in this process instead of on the worker (no deployment needed; it stops, "
                "and its lease lapses, when this terminal goes)",
            ),
        ),
    ),
    Command(
        "rollout status",
        "the rollouts in flight: version, phase, traffic share, since, controller alive or gone, lease left, flow "
        "run URL; exit 1 while one is orphaned (controller gone, challenger still live)",
        rollout_status,
        (JSON,),
    ),
    Command(
        "rollout follow",
        "print the logs of the rollout of VERSION in flight until it ends (Ctrl-C only detaches); exit as deploy",
        rollout_follow,
        (arg("version", help="the version being rolled out"),),
    ),
    Command(
        "rollout cancel",
        "cancel the rollout of VERSION: its flow run is cancelled, the gateway serves the champion only at once, "
        "the ledger records who and why; the version keeps its stage; nothing in flight: says so, exit 0",
        rollout_cancel,
        (
            arg("version", help="the version being rolled out"),
            arg("--reason", default="cancelled by an operator", help="recorded in the ledger"),
        ),
    ),
    Command(
        "approve",
        "answer the paused approval of a deploy_model run (the same form as in the Prefect UI); the approver's "
        "secret comes from $TOLLGATE_APPROVER_SECRET or a prompt",
        approve,
        (
            arg("version", help="the version awaiting approval"),
            arg("--by", required=True, help="approver name (must be on rollout.approvers)"),
            arg("--reject", action="store_true", help="reject instead of approve"),
            arg("--comment", default="", help="why"),
        ),
    ),
    Command(
        "rollback",
        "restore the previous (or the named) Production release whole; the gateway serves it when the command returns",
        rollback,
        (
            arg("--to", default=None, help="the version to restore (default: the previous Production)"),
            arg("--reason", default="manual rollback", help="recorded in the ledger"),
        ),
    ),
]
