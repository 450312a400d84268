"""The promotion ledger on the command line."""

from __future__ import annotations

import argparse

from tollgate import ledger
from tollgate.app.commands.base import EXIT_OK, JSON, Command, print_json, table
from tollgate.context import Context

COLUMNS = ("at", "model", "version", "from", "to", "who", "reason", "evidence_run")


def history(ctx: Context, args: argparse.Namespace) -> int:
    entries = ledger.read(ctx.paths.ledger)
    if args.json:
        print_json([e.to_dict() for e in entries])
    elif not entries:
        print(f"no promotion history yet ({ctx.paths.ledger})")
    else:
        rows = [
            {
                "at": e.at,
                "model": e.model,
                "version": e.version,
                "from": e.from_stage,
                "to": e.to_stage,
                "who": e.who,
                "reason": e.reason[:90],
                "evidence_run": (e.evidence_run_id or "")[:12],
            }
            for e in entries
        ]
        print(table(rows, COLUMNS))
    return EXIT_OK


COMMANDS = [
    Command("history", "the promotion ledger: every stage transition, who, when, why, evidence run", history, (JSON,)),
]
