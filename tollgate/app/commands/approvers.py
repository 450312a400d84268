"""Who may approve a promotion: approvers' personal secrets (tollgate/approvers.py)."""

from __future__ import annotations

import argparse

from tollgate import approvers
from tollgate.app.commands.base import EXIT_OK, JSON, Command, UserError, arg, print_json, table
from tollgate.context import Context


def add(ctx: Context, args: argparse.Namespace) -> int:
    try:
        secret = approvers.add(ctx.paths.approvers, args.name, ctx.config.rollout.approvers)
    except approvers.ApproverError as exc:
        raise UserError(str(exc)) from None
    print(f"approver key for {args.name} (shown once; kept only in {ctx.paths.approvers}, mode 0600):")
    print(secret)
    print(f"authenticator app (codes for the Prefect UI form): {approvers.provisioning_uri(args.name, secret)}")
    print(
        f"shell: {approvers.SECRET_ENV}=<key> tollgate approve VERSION --by {args.name} "
        "(sends a proof bound to that approval, never the key)"
    )
    return EXIT_OK


def remove(ctx: Context, args: argparse.Namespace) -> int:
    try:
        approvers.remove(ctx.paths.approvers, args.name)
    except approvers.ApproverError as exc:
        raise UserError(str(exc)) from None
    print(f"removed {args.name}'s approver secret: they can no longer approve until added again")
    return EXIT_OK


def list_approvers(ctx: Context, args: argparse.Namespace) -> int:
    store = approvers.read(ctx.paths.approvers)
    rows = [
        {
            "name": name,
            "on_rollout.approvers": name in ctx.config.rollout.approvers,
            "secret_added": store.get(name, {}).get("added"),
        }
        for name in sorted(set(store) | set(ctx.config.rollout.approvers))
    ]
    if args.json:
        print_json(rows)
    else:
        print(table(rows, ("name", "on_rollout.approvers", "secret_added")))
        missing = [str(r["name"]) for r in rows if r["on_rollout.approvers"] and not r["secret_added"]]
        if missing:
            print(f"cannot approve yet (no secret): {', '.join(missing)}; run `tollgate approvers add NAME`")
    return EXIT_OK


NAME = arg("name", help="an approver named on rollout.approvers")

COMMANDS = [
    Command(
        "approvers add",
        "give an approver a personal secret (printed once; only its hash is kept)",
        add,
        (NAME,),
        activate=False,
    ),
    Command(
        "approvers remove", "delete an approver's secret (they can no longer approve)", remove, (NAME,), activate=False
    ),
    Command(
        "approvers list",
        "approvers on rollout.approvers and whether each has a secret",
        list_approvers,
        (JSON,),
        activate=False,
    ),
]
