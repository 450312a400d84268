"""`tollgate demo`: the whole lifecycle in a fresh state folder; `--json` prints its summary as one object."""

from __future__ import annotations

import argparse
import contextlib
import sys

from tollgate.app.commands.base import EXIT_OK, Command, UserError, arg, print_json, warn
from tollgate.context import Context
from tollgate.secrets import ensure_stack_credentials


def demo(ctx: Context, args: argparse.Namespace) -> int:
    from tollgate.app.demo import DemoError, fresh_home, run_demo

    demo_ctx = ctx.with_home(fresh_home(ctx.paths.home))
    # The demo stack's logins exist before this process's clients are pointed at it (its `up` keeps them).
    ensure_stack_credentials(demo_ctx.config.servers, demo_ctx.paths)
    demo_ctx.activate()  # before Prefect is imported: Prefect and the stack use the demo's own state folder
    # With --json, stdout carries only the summary object: progress (and anything a library prints) goes to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with quiet:
            summary = run_demo(demo_ctx, interactive=args.interactive, say=warn if args.json else print)
    except DemoError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print_json(summary.to_dict())
    return EXIT_OK


COMMANDS = [
    Command(
        "demo",
        "the whole lifecycle on the bundled dataset in a fresh state folder (.tollgate/demo-*): v1 -> production, "
        "drift alert, backfill, retrain through the gates and rollout, a bad release rolled back automatically",
        demo,
        (
            arg(
                "--interactive",
                action="store_true",
                help="wait for a person to approve each promotion in the Prefect UI instead of auto-approving",
            ),
            arg("--json", action="store_true", help="print the run's summary as one JSON object (progress on stderr)"),
        ),
        activate=False,
    ),
]
