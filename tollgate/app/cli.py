"""`tollgate` command line: a parser built from the command table; each command calls flows or the core.

Exit codes: 0 ok, 1 a gate or check said no, 2 usage or config error (argparse's own usage errors included).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tollgate.app.commands import data, demo, history, monitor, rollout, stack, train
from tollgate.app.commands.base import EXIT_NO, EXIT_USAGE, CheckFailed, Command, UserError
from tollgate.app.stack import StackError
from tollgate.config import ConfigError
from tollgate.context import DEFAULT_CONFIG, make_context

ENVIRONMENTS = ("dev", "staging", "prod")

# The command table, by area; `tollgate --help` lists them in this order.
COMMANDS: list[Command] = [
    *stack.COMMANDS,
    *data.COMMANDS,
    *train.COMMANDS,
    *rollout.COMMANDS,
    *monitor.COMMANDS,
    *history.COMMANDS,
    *demo.COMMANDS,
]

# Two-word commands ("data generate") live under a group; its help line.
GROUPS = {
    "config": "validate or print the resolved config",
    "data": "the bundled dataset",
    "hooks": "git hooks",
}


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, built from COMMANDS; every subcommand accepts the global options too."""
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, default=False)
    parser = argparse.ArgumentParser(
        prog="tollgate",
        description="Tollgate: validated, gated, monitored tabular models on Prefect + MLflow.",
        epilog="State lives in $TOLLGATE_HOME (default .tollgate/ in the project root). "
        "Exit codes: 0 ok, 1 a gate or check said no, 2 usage or config error.",
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


def run(command: Command, args: argparse.Namespace) -> int:
    """Load the config into a Context, point the clients at the stack (unless the command opts out), run it."""
    ctx = make_context(args.config, args.env)
    if command.activate:
        ctx.activate()
    return int(command.run(ctx, args))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return run(args.entry, args)
    except ConfigError as exc:
        print("config error:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_USAGE
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CheckFailed as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return EXIT_NO
    except StackError as exc:
        print(f"stack error: {exc}", file=sys.stderr)
        return EXIT_NO
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
