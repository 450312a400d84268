"""Monitoring commands: drift (drift_check) and backfill (ground_truth_backfill)."""

from __future__ import annotations

import argparse

from tollgate.app.commands.base import EXIT_NO, EXIT_OK, Command, UserError, arg, print_json, require_stack
from tollgate.context import Context


def drift(ctx: Context, args: argparse.Namespace) -> int:
    require_stack(ctx)
    from flows.drift import drift_check
    from tollgate.registry import RegistryError

    ctx.paths.reports.mkdir(parents=True, exist_ok=True)
    try:
        result = drift_check(window_hours=args.window, config=ctx)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    verdict = "DRIFT DETECTED" if result["detected"] else "no drift"
    print(
        f"drift check of v{result['version']} over {result['rows']} logged predictions: "
        f"{verdict} (share {result['drift_share']:.0%})"
    )
    print(f"  drifted features: {', '.join(result['drifted']) or 'none'}")
    print(f"  segments with drift: {', '.join(result['segments']) or 'none'}")
    print(f"  Evidently report: {result['report']}; MLflow monitoring run {result['monitoring_run_id']}")
    if args.json:
        print_json(result, indent=None)
    drifted = bool(result["detected"])
    return EXIT_NO if drifted and args.fail_on_drift else EXIT_OK


def backfill(ctx: Context, args: argparse.Namespace) -> int:
    require_stack(ctx)
    from flows.backfill import ground_truth_backfill
    from tasks.ground_truth import LabelsError
    from tollgate.registry import RegistryError

    try:
        result = ground_truth_backfill(labels=str(ctx.resolve(args.path)), config=ctx)
    except (LabelsError, RegistryError) as exc:
        raise UserError(str(exc)) from None
    v = result["verdict"]
    print(f"labels: {result['ingested']['changed']} new or changed, {result['ingested']['total']} stored")
    totals = [r for r in result["rows"] if r["day"] == "all" and r["scope"] == "overall"]
    for r in sorted(totals, key=lambda r: (r["model_version"], r["role"])):
        print(
            f"  v{r['model_version']} {r['role']:<9} {int(r['n']):>6} labelled  AUC {r['auc']:.4f}  "
            f"log loss {r['log_loss']:.4f}"
        )
    print(f"Production v{v['version']}: {v['status']} ({v['reason']}); action: {result['action']}")
    return EXIT_NO if v["status"] in ("degraded", "severe") else EXIT_OK


COMMANDS = [
    Command(
        "drift",
        "run drift_check now: the log window vs the Production release's reference; alert on drift",
        drift,
        (
            arg(
                "--window",
                type=float,
                default=None,
                help="hours of the prediction log (default monitoring.drift_window_hours of the Production release)",
            ),
            arg("--fail-on-drift", action="store_true", help="exit 1 when drift is detected"),
            arg("--json", action="store_true", help="also print the result as JSON"),
        ),
    ),
    Command(
        "backfill",
        "ingest a labels file (prediction_id or entity id, label, label_time) and run "
        "ground_truth_backfill; exit 1 when live performance is degraded",
        backfill,
        (arg("path", help="labels .csv/.parquet"),),
    ),
]
