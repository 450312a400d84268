"""Monitoring commands: drift (drift_check) and backfill (ground_truth_backfill)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from tollgate.app.commands.base import EXIT_NO, EXIT_OK, Command, UserError, arg, print_json, require_stack
from tollgate.app.output import library_output
from tollgate.context import Context

CLOCK_HELP = "prediction-time (when the gateway answered; default) or event-time (the records' own timestamp)"


def _bounds(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """--since/--until as epoch seconds (UserError naming the bad one)."""
    from tasks.drift import WindowError, to_epoch

    out = []
    for flag, value in (("--since", args.since), ("--until", args.until)):
        try:
            out.append(to_epoch(value))
        except WindowError as exc:
            raise UserError(f"{flag}: {exc}") from None
    since, until = out
    if since is not None and until is not None and until <= since:
        raise UserError(f"--until ({args.until}) must be later than --since ({args.since})")
    return since, until


def drift(ctx: Context, args: argparse.Namespace) -> int:
    since, until = _bounds(args)  # a usage error is told before the stack is asked anything
    require_stack(ctx)
    from flows.drift import drift_check
    from tasks.drift import WindowError
    from tollgate.registry import RegistryError

    ctx.paths.reports.mkdir(parents=True, exist_ok=True)
    try:
        with library_output(json_only=args.json):  # MLflow's and Prefect's prints go to the log file
            result = drift_check(window_hours=args.window, since=since, until=until, by=args.by, config=ctx)
    except (RegistryError, WindowError) as exc:
        raise UserError(str(exc)) from None
    window = result["window"]
    if args.json:  # one JSON object on stdout and nothing else
        print_json(_no_nan(result), indent=None)
        return EXIT_NO if result["detected"] and args.fail_on_drift else EXIT_OK
    print(
        f"drift check of v{result['version']} over {result['rows']} logged predictions "
        f"({window['by']} {window['label']}): {result['headline']}"
    )
    if window["excluded"]:
        print(f"  {window['excluded']} predictions without an event time were left out of this event-time window")
    print(f"  drifted features (overall): {', '.join(result['drifted']) or 'none'} (share {result['drift_share']:.0%})")
    print(f"  segments with drift: {', '.join(result['segments']) or 'none'}")
    print(f"  {_estimate_text(result.get('estimate') or {})}")
    print(f"  Evidently report: {result['report']}; MLflow monitoring run {result['monitoring_run_id']}")
    return EXIT_NO if result["detected"] and args.fail_on_drift else EXIT_OK


def _estimate_text(verdict: dict[str, Any]) -> str:
    """The window's estimated live metric (before labels) and what it means against live_degraded_at."""
    if verdict.get("status") in (None, "none"):
        return f"estimated live metric: none ({verdict.get('why') or 'no estimate'})"
    text = (
        f"estimated live {verdict['metric']} {verdict['value']:.4f} (95% [{verdict['low']:.4f}, {verdict['high']:.4f}]"
        f", from the log alone): {verdict['status'].upper()}, {verdict['consecutive']} of {verdict['needed']} windows "
        f"in a row worse than {verdict['threshold']}"
    )
    if verdict["status"] == "degraded":
        text += ": tollgate.performance.degraded raised, marked estimated (never a rollback)"
    return text + (f"; {verdict['unreliable']}" if verdict.get("unreliable") else "")


def _value(x: Any) -> str:
    """A metric or a count as people read it: counts whole (12470, not 1.247e+04), metrics to 4 digits."""
    if not isinstance(x, (int, float)) or math.isnan(x):
        return "-"
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.4g}"


def backfill(ctx: Context, args: argparse.Namespace) -> int:
    from tasks.drift import WindowError
    from tasks.ground_truth import LabelsError, parse_every
    from tollgate.registry import RegistryError

    if args.every is not None and args.chunks is not None:
        raise UserError("--every and --chunks are two ways to window: give one")
    if args.chunks is not None and args.chunks < 1:
        raise UserError(f"--chunks must be at least 1, not {args.chunks}")
    try:
        parse_every(args.every)
    except ValueError as exc:
        raise UserError(f"--every: {exc}") from None
    require_stack(ctx)
    from flows.backfill import ground_truth_backfill

    try:
        with library_output(json_only=args.json):  # MLflow's and Prefect's prints go to the log file
            result = ground_truth_backfill(
                labels=str(ctx.resolve(args.path)), by=args.by, every=args.every, chunks=args.chunks, config=ctx
            )
    except (LabelsError, RegistryError, WindowError) as exc:
        raise UserError(str(exc)) from None
    v = result["verdict"]
    if args.json:
        keys = ("ingested", "verdict", "action", "alerts", "monitoring_run_id", "windowing", "excluded", "rows")
        print_json(_no_nan({k: result[k] for k in keys if k in result}))
    else:
        _print_backfill(result)
    return EXIT_NO if v["status"] in ("degraded", "severe") else EXIT_OK


def _no_nan(body: Any) -> Any:
    """`body` with NaN (a metric undefined on its rows) as null, so stdout is strict JSON."""
    if isinstance(body, float) and math.isnan(body):
        return None
    if isinstance(body, dict):
        return {k: _no_nan(v) for k, v in body.items()}
    if isinstance(body, (list, tuple)):
        return [_no_nan(v) for v in body]
    return body


def _print_backfill(result: dict[str, Any]) -> None:
    v, metric = result["verdict"], result["verdict"]["metric"]
    print(f"labels: {result['ingested']['changed']} new or changed, {result['ingested']['total']} stored")
    if result["excluded"]:
        print(f"  {result['excluded']} labelled predictions without an event time were left out")
    rows = [r for r in result["rows"] if r["scope"] == "overall"]
    totals = sorted((r for r in rows if r["window"] == "all"), key=lambda r: (r["model_version"], r["role"]))
    for r in totals:
        others = [k for k in r if k not in ("model_version", "role", "scope", "window", "start", "end", "n", metric)]
        extra = "  ".join(f"{k} {_value(r[k])}" for k in others[:3])
        print(
            f"  v{r['model_version']} {r['role']:<9} {int(r['n']):>6} labelled  {metric} {_value(r[metric])}  {extra}"
        )
    series = [
        r for r in rows if r["window"] != "all" and r["role"] == "champion" and r["model_version"] == v["version"]
    ]
    if series:
        print(f"  v{v['version']} champion by window ({result['windowing']['by']}):")
        for r in series:
            print(f"    {r['window']:<42} {int(r['n']):>6} labelled  {metric} {_value(r[metric])}")
    print(f"Production v{v['version']}: {v['status']} ({v['reason']}); action: {result['action']}")
    shift = (result.get("reconciliation") or {}).get("concept_shift")
    if shift:
        print(
            f"CONCEPT SHIFT of v{shift['version']} since {shift['since']}: realized {metric} {_value(shift['realized'])} "
            f"outside the estimate from the scores ({_value(shift['estimated'])}); its estimates are unreliable from now on"
        )


def estimate(ctx: Context, args: argparse.Namespace) -> int:
    from tasks.ground_truth import parse_every

    since, until = _bounds(args)
    try:
        every = parse_every(args.every)
    except ValueError as exc:
        raise UserError(f"--every: {exc}") from None
    require_stack(ctx)
    from tasks.estimation import estimate_now, record_estimate
    from tollgate.estimation import METHODS
    from tollgate.registry import RegistryError

    try:
        result = estimate_now(ctx, since, until, every)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    result["signals"] = record_estimate(ctx, result)  # the champion's estimate, for status and /metrics
    if args.json:
        print_json(_no_nan(result), indent=None)
        return EXIT_OK
    metric = result["metric"]
    print(
        f"estimated live {metric} of {result['model']} from {result['rows_read']} logged predictions "
        f"({result['method']})"
    )
    for version, how in result["estimators"].items():
        if how not in METHODS.values():
            print(f"  v{version}: no estimate: {how}")
    shown = [r for r in result["rows"] if r["scope"] == "overall"]
    for r in shown:
        est = r["estimate"]
        value = "n/a: " + r["why"] if est is None else f"{est:.4f}  95% [{r['low']:.4f}, {r['high']:.4f}]"
        flag = f"  {r['unreliable'].upper()}" if r.get("unreliable") else ""
        print(
            f"  v{r['model_version']:<4} {r['role']:<9} {r['window']:<42} {r['n']:>7} predictions  "
            f"{r['metric']} {value}{flag}"
        )
    segments = len({r["scope"] for r in result["rows"]} - {"overall"})
    if segments:
        print(f"  ... and {segments} segment values per window: --json lists them")
    print("estimates assume P(label | output) is what the holdout showed: a concept shift is invisible to them")
    return EXIT_OK


COMMANDS = [
    Command(
        "estimate",
        "estimated live primary metric (auc, auc_ovr or rmse) from the prediction log alone, before labels "
        "arrive: per version, role, window and segment, with its 95 percent interval",
        estimate,
        (
            arg("--since", default=None, help="window start: ISO 8601 (UTC unless it says) or epoch seconds"),
            arg("--until", default=None, help="window end (default now): ISO 8601 or epoch seconds"),
            arg("--every", default=None, help="also per fixed window of prediction time: 1h, 1d, 7d, 90m, ..."),
            arg("--json", action="store_true", help="print the result as one JSON object, nothing else"),
        ),
    ),
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
            arg("--since", default=None, help="window start: ISO 8601 (UTC unless it says) or epoch seconds"),
            arg("--until", default=None, help="window end (default now): ISO 8601 or epoch seconds"),
            arg("--by", choices=("prediction-time", "event-time"), default="prediction-time", help=CLOCK_HELP),
            arg("--fail-on-drift", action="store_true", help="exit 1 when drift is detected"),
            arg("--json", action="store_true", help="print the result as one JSON object, nothing else"),
        ),
    ),
    Command(
        "backfill",
        "ingest a labels file (prediction_id or entity id, label, label_time) and run "
        "ground_truth_backfill; exit 1 when live performance is degraded",
        backfill,
        (
            arg("path", help="labels .csv/.parquet"),
            arg("--every", default=None, help="live metrics also per fixed window: 1h, 1d, 7d, 90m, ..."),
            arg("--chunks", type=int, default=None, help="live metrics also per N equal-count chunks by time"),
            arg("--by", choices=("prediction-time", "event-time"), default="prediction-time", help=CLOCK_HELP),
            arg("--json", action="store_true", help="print the result as one JSON object (nothing else on stdout)"),
        ),
    ),
]
