"""`tollgate` command line: a parser built from the command table; each command calls flows or the core.

Exit codes: 0 ok, 1 a gate or check said no, 2 usage or config error (argparse's own usage errors included).
No error a user can cause prints a traceback: every known error type maps to one message and an exit code
(KNOWN_ERRORS); anything else is an internal error, printed as one line with its traceback in the command log
(tollgate/app/output.py), or raised as it is with --verbose.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tollgate.app.commands import approvers, batch, data, demo, history, monitor, rollout, stack, train
from tollgate.app.commands.base import EXIT_NO, EXIT_USAGE, Command
from tollgate.app.output import CommandLog, command_log
from tollgate.app.output import log as app_log
from tollgate.config import ConfigError
from tollgate.context import DEFAULT_CONFIG, Context, make_context
from tollgate.paths import OWNER_ONLY_UMASK

ENVIRONMENTS = ("dev", "staging", "prod")

# The command table, by area; `tollgate --help` lists them in this order.
COMMANDS: list[Command] = [
    *stack.COMMANDS,
    *data.COMMANDS,
    *train.COMMANDS,
    *rollout.COMMANDS,
    *approvers.COMMANDS,
    *monitor.COMMANDS,
    *batch.COMMANDS,
    *history.COMMANDS,
    *demo.COMMANDS,
]

# Two-word commands ("data generate") live under a group; its help line.
GROUPS = {
    "approvers": "who may approve a promotion (personal secrets)",
    "config": "validate or print the resolved config",
    "data": "the bundled dataset",
    "hooks": "git hooks",
    "rollout": "rollouts in flight: status, follow, cancel",
}

# Every error a command or flow raises for a reason the user can act on: "module:Class" -> (exit code, prefix).
# Looked up in sys.modules, never imported here: flows and tasks import Prefect, which must wait for
# `ctx.activate()` (and an exception of a module that was never loaded cannot have been raised). The first
# match wins, so subclasses come before their bases.
KNOWN_ERRORS: dict[str, tuple[int, str]] = {
    # a gate or check said no: exit 1
    "tollgate.app.commands.base:CheckFailed": (EXIT_NO, "failed"),
    "tasks.validation:ValidationFailed": (EXIT_NO, "failed: data failed validation; nothing was registered"),
    "tasks.gates:GateRejected": (EXIT_NO, "failed: rejected by the gate"),
    "tasks.rollout:RolloutFailed": (EXIT_NO, "failed: rollout stopped"),
    "tasks.approvals:ApprovalError": (EXIT_NO, "failed"),
    "tasks.actions:AutomaticActionFailed": (EXIT_NO, "failed"),
    "tasks.ci:CIFailed": (EXIT_NO, "failed"),
    "tasks.retraining:SnapshotFailed": (EXIT_NO, "failed: data error in the retrain snapshot; nothing was trained"),
    "tollgate.app.stack:StackError": (EXIT_NO, "stack error"),
    "tollgate.gateway_client:GatewayError": (EXIT_NO, "gateway error"),
    "tollgate.provenance:UntrustedRelease": (EXIT_NO, "refused"),
    # usage, config or unreadable input: exit 2
    "tollgate.config:ConfigError": (EXIT_USAGE, "config error"),
    "tollgate.app.commands.base:UserError": (EXIT_USAGE, "error"),
    "tasks.validation:DataReadError": (EXIT_USAGE, "error"),
    "tasks.data:DataVersionError": (EXIT_USAGE, "error"),
    "tasks.ground_truth:LabelsError": (EXIT_USAGE, "error"),
    "tollgate.registry:RegistryError": (EXIT_USAGE, "error"),
    "tollgate.app.demo:DemoError": (EXIT_USAGE, "error"),
    "tollgate.app.githook:HookError": (EXIT_USAGE, "error"),
    "tollgate.secrets:CredentialsError": (EXIT_USAGE, "error"),
    "builtins:FileNotFoundError": (EXIT_USAGE, "error"),
    "builtins:IsADirectoryError": (EXIT_USAGE, "error"),
    "builtins:NotADirectoryError": (EXIT_USAGE, "error"),
    "builtins:PermissionError": (EXIT_USAGE, "error"),
}


def known_error(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, message prefix) for an error in KNOWN_ERRORS, else None (an internal error)."""
    for key, outcome in KNOWN_ERRORS.items():
        module, name = key.split(":")
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return outcome
    return None


def error_lines(exc: BaseException, prefix: str) -> list[str]:
    """What the user sees for a known error: the prefix and the message (a config error: one line per problem)."""
    if isinstance(exc, ConfigError):
        return [f"{prefix}:", *(f"  {line}" for line in exc.problems)]
    text = str(exc).strip()
    if prefix.startswith("failed:") or not text:
        return [prefix, *text.splitlines()] if text else [prefix]
    return [f"{prefix}: {text}"]


def _global_options(parser: argparse.ArgumentParser, default: bool) -> None:
    """--config and --env, accepted before the command (with defaults) and after it (overriding)."""
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG if default else argparse.SUPPRESS,
        help="pipeline config (default configs/pipeline.yaml)",
    )
    parser.add_argument(
        "--env",
        default="dev" if default else argparse.SUPPRESS,
        choices=ENVIRONMENTS,
        help="environment overlay from configs/environments/ (default dev)",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=False if default else argparse.SUPPRESS,
        help="also show Prefect's and the libraries' logs on the terminal (they always go to "
        "$TOLLGATE_HOME/logs/cli.log), and the traceback of an internal error",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, built from COMMANDS; every subcommand accepts the global options too."""
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, default=False)
    parser = argparse.ArgumentParser(
        prog="tollgate",
        description="Tollgate: validated, gated, monitored tabular models on Prefect + MLflow.",
        epilog="State lives in $TOLLGATE_HOME (default .tollgate/ in the project root); each command's Prefect and "
        "library logs in its logs/cli.log. Exit codes: 0 ok, 1 a gate or check said no, 2 usage, config or "
        "unreadable input.",
    )
    _global_options(parser, default=True)
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in COMMANDS:
        *group, name = command.name.split()
        where = top
        if group:
            if group[0] not in groups:
                holder = top.add_parser(group[0], help=GROUPS[group[0]], description=GROUPS[group[0]], parents=[common])
                groups[group[0]] = holder.add_subparsers(dest=f"{group[0]}_command", metavar="ACTION", required=True)
            where = groups[group[0]]
        sub = where.add_parser(name, help=command.help, description=command.help, parents=[common])
        for a in command.args:
            sub.add_argument(*a.flags, **a.options)
        sub.set_defaults(entry=command)
    return parser


def run(command: Command, ctx: Context, args: argparse.Namespace) -> int:
    """Point the clients at the stack (unless the command opts out) and run the command."""
    if command.activate:
        ctx.activate()
    return int(command.run(ctx, args))


def _internal_error(exc: BaseException, log: CommandLog) -> int:
    """One line on stderr; the traceback goes to the command log."""
    app_log.error("internal error", exc_info=exc)
    print(f"internal error: {type(exc).__name__}: {exc} (full traceback in {log.shown_path()})", file=sys.stderr)
    return EXIT_NO


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (never a traceback for a known error, see KNOWN_ERRORS)."""
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(words)
    os.umask(OWNER_ONLY_UMASK)  # state files (predictions, ledger, logins, logs) are the owner's alone
    try:
        ctx = make_context(args.config, args.env)
    except ConfigError as exc:
        print("\n".join(error_lines(exc, "config error")), file=sys.stderr)
        return EXIT_USAGE
    with command_log(ctx.paths, words, verbose=args.verbose) as log:
        try:
            return run(args.entry, ctx, args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            known = known_error(exc)
            if known is None:
                if args.verbose:
                    app_log.error("internal error", exc_info=exc)
                    raise
                return _internal_error(exc, log)
            code, prefix = known
            print("\n".join(error_lines(exc, prefix)), file=sys.stderr)
            return code


if __name__ == "__main__":
    sys.exit(main())
