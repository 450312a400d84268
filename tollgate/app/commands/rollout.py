"""Commands that move releases: deploy (deploy_model), approve (a paused approval), rollback."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from tollgate import approvers
from tollgate.app.commands.base import EXIT_OK, CheckFailed, Command, UserError, arg, require_stack, warn
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
    from tasks.deployment import RolloutFailed
    from tollgate.registry import RegistryError

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
    except RolloutFailed as exc:
        raise CheckFailed(f"rollout of v{args.version} stopped: {exc}. Production is as it was before.") from None
    print(deployed_line(result))
    return EXIT_OK


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


COMMANDS = [
    Command(
        "deploy",
        "run deploy_model: shadow -> canary -> approval -> production, automatic rollback on a failed "
        "smoke test; exit 1 if any phase says no",
        deploy,
        (arg("version", help="the Staging version to roll out"),),
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
