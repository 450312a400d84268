"""The promotion ledger on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from tollgate import ledger
from tollgate.app.commands.base import (
    EXIT_NO,
    EXIT_OK,
    JSON,
    Command,
    UserError,
    arg,
    print_json,
    require_stack,
    table,
    warn,
)
from tollgate.context import Context
from tollgate.gateway_client import GatewayError

COLUMNS = ("at", "model", "version", "from", "to", "who", "reason", "evidence_run")


def serving_disagreements(ctx: Context) -> list[str]:
    """Where what the gateway serves differs from the Production version the verified ledger proves (empty when
    the gateway is not running: nothing is served, so nothing disagrees)."""
    from tollgate.registry import ledger_entries, proven_holder

    proven = proven_holder(ledger_entries(ctx.registry), "Production")
    gateway = ctx.gateway()
    try:
        serving = gateway.health()
    except GatewayError as exc:
        if exc.unreachable:
            return []
        return [f"gateway at {ctx.config.servers.gateway_url} did not answer /health: {exc}"]
    finally:
        gateway.close()
    found = []
    if (serving.get("champion") or None) != proven:
        found.append(
            f"{ctx.registry.model}: the gateway serves v{serving.get('champion')} as champion but the ledger's "
            f"Production is {'v' + proven if proven else 'no version'}"
        )
    return found


def consistency(ctx: Context) -> list[str]:
    """Every disagreement between the ledger's chain, registry stages, aliases, the ledger and serving."""
    from tollgate.registry import disagreements, mirror_disagreements

    return [
        *ledger.verify(ctx.paths.ledger),
        *disagreements(ctx.registry),
        *mirror_disagreements(ctx.registry),
        *serving_disagreements(ctx),
    ]


def verify(ctx: Context, args: argparse.Namespace) -> int:
    require_stack(ctx)
    problems = consistency(ctx)
    if args.json:
        print_json({"ok": not problems, "problems": problems})
    elif problems:
        print("\n".join(f"DISAGREES: {p}" for p in problems))
    else:
        count = len(ledger.read(ctx.paths.ledger))
        print(f"ok: {count} ledger entries chained intact; registry stages, aliases, ledger and gateway agree")
    return EXIT_NO if problems else EXIT_OK


def history(ctx: Context, args: argparse.Namespace) -> int:
    if args.verify:
        return verify(ctx, args)
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


def report(ctx: Context, args: argparse.Namespace) -> int:
    """Write one version's release report (a self-contained HTML file)."""
    from tasks.release_report import gather, render

    out = Path(args.out or f"{ctx.config.project.registered_model}-v{args.version}.html")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: name the file to write, e.g. {out / f'v{args.version}.html'}")
    if not out.parent.exists():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    require_stack(ctx)  # after the usage checks: a wrong --out is said without asking the stack anything
    parts = gather(ctx, args.version)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(parts))
    tmp.replace(out)  # a reader never sees half a report
    pictures = sum(len(v) for v in parts.pictures.values()) + len(parts.live)
    print(
        f"wrote {out} ({out.stat().st_size // 1024} KiB, {pictures} pictures): {parts.model} v{parts.version}, {parts.stage}"
    )
    for problem in parts.problems:
        warn(f"not in the report: {problem}")
    return EXIT_OK


COMMANDS = [
    Command(
        "report",
        "a self-contained HTML release report of one version: model card, data, gate forest plot and curves, "
        "shadow/canary evidence, approval, ledger, live metric and drift",
        report,
        (
            arg("version", help="the registered version (a number)"),
            arg("--out", help="the file to write (default: <registered_model>-v<VERSION>.html here)"),
        ),
    ),
    Command(
        "history",
        "the promotion ledger: every stage transition, who, when, why, evidence run",
        history,
        (
            JSON,
            arg(
                "--verify",
                action="store_true",
                help="check the ledger's hash chain and that registry stages, aliases, ledger and the gateway "
                "agree; exit 1 naming the first problem",
            ),
        ),
    ),
]
