"""What every command shares: the command-table entry, the two user-facing errors, exit codes and output helpers.

A command is a small function `(ctx, args) -> exit code` that calls a flow or the core; the parser is built from
the table of `Command` entries (tollgate/app/cli.py), so the function itself parses nothing. Flows and tasks are
imported inside the functions: Prefect must be imported only after `ctx.activate()`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tollgate.context import Context
from tollgate.procs import healthy

if TYPE_CHECKING:
    from tasks.gates import GateVerdict

EXIT_OK, EXIT_NO, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """A user mistake (bad path, bad argument, stack not running): printed without a traceback, exit 2."""


class CheckFailed(Exception):
    """A gate or check said no: printed, exit 1."""


@dataclass(frozen=True)
class Arg:
    """One argument of a command: argparse's name or flags and its keywords."""

    flags: tuple[str, ...]
    options: Mapping[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    """An argument entry, spelled like `parser.add_argument(...)`."""
    return Arg(flags, options)


JSON = arg("--json", action="store_true", help="print JSON")

Run = Callable[[Context, argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One row of the command table: `tollgate <name> [args]` runs `run(ctx, args)`.

    `name` may have two words ("data generate"): the first is a group (see cli.GROUPS). `activate` points the
    process's Prefect and MLflow clients at the configured stack before `run` (off for commands that need no
    servers, and for the demo, which activates its own state folder).
    """

    name: str
    help: str
    run: Run
    args: tuple[Arg, ...] = ()
    activate: bool = True


def table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    """Rows as a left-aligned text table with a header; None prints as '-'."""
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def print_json(body: Any, indent: int | None = 2) -> None:
    """`body` as JSON on stdout (values JSON does not know are printed as strings)."""
    print(json.dumps(body, indent=indent, default=str))


def warn(message: str) -> None:
    """A note on stderr (stdout stays the command's result)."""
    print(message, file=sys.stderr)


def fmt(x: float | None) -> str | None:
    """A metric with 4 decimals; None (and NaN) stay empty."""
    return None if x is None or x != x else f"{x:.4f}"


def require_stack(ctx: Context) -> None:
    """Raise UserError naming the server that does not answer (the flows need both)."""
    servers = ctx.config.servers
    for name, url in (("Prefect API", servers.prefect_url), ("MLflow server", servers.mlflow_url)):
        if not healthy(f"{url}/health", timeout=5):
            raise UserError(f"{name} at {url} is not reachable: start the stack with `tollgate up`")


def print_verdict(verdict: GateVerdict) -> None:
    """The gate verdict: the summary, then one row per check."""
    print(verdict.summary())
    rows = [
        {
            "scope": c.scope,
            "check": c.check,
            "status": c.status,
            "n": c.n,
            "challenger": fmt(c.challenger),
            "baseline": fmt(c.champion),
            "ci": "" if c.ci_low is None else f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]",
        }
        for c in verdict.checks
    ]
    print(table(rows, ("scope", "check", "status", "n", "challenger", "baseline", "ci")))
