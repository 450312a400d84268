"""`tollgate` command line: parses arguments and calls flows. Exit codes: 0 ok, 1 a gate or check said no,
2 usage or config error."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tollgate.app.stack import Stack, StackError
from tollgate.config import SCENARIOS, ConfigError, load_config
from tollgate.context import Context, make_context
from tollgate.paths import PROJECT_ROOT

if TYPE_CHECKING:
    from tasks.gates import GateVerdict

EXIT_OK, EXIT_NO, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """A user mistake (bad path, bad argument): printed without a traceback, exit 2."""


class CheckFailed(Exception):
    """A gate or check said no: printed, exit 1."""


def _table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


# -- commands ------------------------------------------------------------------------------------
def _stack(rt: Context) -> Stack:
    return Stack(rt.config.servers, rt.paths, config_path=rt.loaded.path, env=rt.loaded.env)


def cmd_up(rt: Context, args: argparse.Namespace) -> int:
    from tollgate.app.stack import apply_deployments

    stack = _stack(rt)
    stack.up()
    if not args.no_deployments and rt.config.servers.prefect_api_url is None:
        apply_deployments(rt.root, rt.config.servers, rt.paths)
    print(_table(stack.status(), ("service", "url", "pid", "healthy", "rss_mb")))
    return EXIT_OK


def cmd_down(rt: Context, args: argparse.Namespace) -> int:
    _stack(rt).down()
    return EXIT_OK


def cmd_status(rt: Context, args: argparse.Namespace) -> int:
    rows = _stack(rt).status()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows, ("service", "url", "pid", "healthy", "rss_mb")))
        print(f"state folder: {rt.paths.home}")
    return EXIT_OK if all(r["healthy"] for r in rows) else EXIT_NO


def cmd_config_check(args: argparse.Namespace) -> int:
    loaded = load_config(args.config, args.env)
    print(f"ok: {loaded.path} (env {loaded.env}) is valid; digest {loaded.config.digest()[:12]}")
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    loaded = load_config(args.config, args.env)
    body = loaded.config.model_dump(mode="json")
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(body, sort_keys=False), end="")
    return EXIT_OK


def cmd_data_generate(rt: Context, args: argparse.Namespace) -> int:
    from tasks.data import track_snapshot
    from tollgate.synthetic import generate, write_parquet

    gen = rt.config.generation
    if gen is None:
        raise UserError(
            f"{rt.loaded.path} has no 'generation' section: it describes your own data. "
            "Track your table with `dvc add` instead (see README: Bring your own data)."
        )
    production = args.scenario is not None
    frame = generate(gen, args.scenario or "none", production=production)
    if production:
        out = rt.resolve(args.out) if args.out else rt.root / "data" / "periods" / f"{args.scenario}.parquet"
    else:
        out = rt.resolve(args.out or rt.config.dataset.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(frame, str(out))
    span = f"{frame[rt.config.dataset.timestamp].min()} .. {frame[rt.config.dataset.timestamp].max()}"
    print(f"wrote {out} ({len(frame)} rows, {frame.shape[1]} columns, {span})")
    if production:
        print(f"scenario {args.scenario}: a production period after the training snapshot (labels included)")
        return EXIT_OK
    if args.out:
        return EXIT_OK
    from tasks.data import file_md5, recorded_md5

    before = recorded_md5(rt.root, rt.config.dataset.path)
    md5 = file_md5(out)
    if before is not None and before != md5:
        print(
            f"warning: the regenerated snapshot (md5 {md5}) differs from the version data.dvc records ({before}); "
            "data.dvc will record the new version: commit it if that is intended.",
            file=sys.stderr,
        )
    print("tracking with DVC (dvc add + push to the project's local remote) ...", flush=True)
    md5 = track_snapshot(rt.root, rt.config.dataset.path)
    state = "matches the version data.dvc records" if before == md5 else "recorded in data.dvc"
    print(f"data version md5 {md5}: {state}")
    return EXIT_OK


def cmd_data_track(rt: Context, args: argparse.Namespace) -> int:
    from tasks.data import track_snapshot

    path = rt.resolve(rt.config.dataset.path)
    if not path.is_file():
        raise UserError(f"dataset.path {rt.config.dataset.path} ({path}) is not a file")
    print(f"tracking {rt.config.dataset.path} with DVC (dvc add, data.dvc, push to the default remote) ...", flush=True)
    print(f"data version md5 {track_snapshot(rt.root, rt.config.dataset.path)} recorded in data.dvc: commit it")
    return EXIT_OK


def cmd_validate(rt: Context, args: argparse.Namespace) -> int:
    from tasks.validation import DataReadError, validate_file

    try:
        _, report = validate_file(args.path, rt.config.dataset, rt.paths.gx_root)
    except DataReadError as exc:
        raise UserError(str(exc)) from None
    print(report.summary())
    print(f"Data Docs: {report.data_docs}")
    return EXIT_OK if report.passed else EXIT_NO


def _require_stack(rt: Context) -> None:
    from tollgate.app.stack import healthy

    servers = rt.config.servers
    for name, url in (
        ("Prefect API", f"{servers.prefect_url}/health"),
        ("MLflow server", f"{servers.mlflow_url}/health"),
    ):
        if not healthy(url, timeout=5):
            raise UserError(
                f"{name} at {url.removesuffix('/health')} is not reachable: start the stack with `tollgate up`"
            )


def _print_verdict(verdict: GateVerdict) -> None:
    print(verdict.summary())
    rows = [
        {
            "scope": c.scope,
            "check": c.check,
            "status": c.status,
            "n": c.n,
            "challenger": _fmt(c.challenger),
            "baseline": _fmt(c.champion),
            "ci": "" if c.ci_low is None else f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]",
        }
        for c in verdict.checks
    ]
    print(_table(rows, ("scope", "check", "status", "n", "challenger", "baseline", "ci")))


def _fmt(x: float | None) -> str | None:
    return None if x is None or x != x else f"{x:.4f}"


def cmd_train(rt: Context, args: argparse.Namespace) -> int:
    import time

    _require_stack(rt)
    from flows.training import training_pipeline
    from tasks.data import DataVersionError
    from tasks.gates import GateRejected
    from tasks.validation import DataReadError, ValidationFailed

    data = str(rt.resolve(args.data)) if args.data else None
    start = time.perf_counter()
    try:
        result = training_pipeline(
            config=str(rt.loaded.path.resolve()), env=rt.loaded.env, data=data, allow_dirty=args.allow_dirty
        )
    except ValidationFailed as exc:
        raise CheckFailed(
            f"data failed validation; no model was trained or registered.\n{exc.report.summary()}"
        ) from None
    except (DataReadError, DataVersionError) as exc:
        raise UserError(str(exc)) from None
    except GateRejected as exc:
        _print_verdict(exc.verdict)
        raise CheckFailed(
            f"{rt.config.project.registered_model} v{exc.version} was registered but REJECTED by the gate; "
            "it stays in stage None and production is unchanged"
        ) from None
    wall = time.perf_counter() - start
    _print_verdict(result.verdict)
    d = result.data
    print(
        f"data: {d.path} md5 {d.md5} ({'matches data.dvc' if d.matches_dvc else 'NOT the version data.dvc records'}), "
        f"git {d.git_sha}{' (dirty)' if d.git_dirty else ''}"
    )
    inner = result.timings["fit"] + result.timings["predict"]
    print(
        f"time: {wall:.1f} s wall, fit {result.timings['fit']:.2f} s + predict {result.timings['predict']:.2f} s "
        f"({inner / wall:.0%} of wall)"
    )
    print(f"{rt.config.project.registered_model} v{result.version} -> {result.stage} (run {result.run_id})")
    if args.json:
        print(json.dumps(result.to_dict(), default=str))
    return EXIT_OK


def cmd_history(rt: Context, args: argparse.Namespace) -> int:
    from tollgate import ledger

    entries = ledger.read(rt.paths.ledger)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return EXIT_OK
    if not entries:
        print(f"no promotion history yet ({rt.paths.ledger})")
        return EXIT_OK
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
    print(_table(rows, ("at", "model", "version", "from", "to", "who", "reason", "evidence_run")))
    return EXIT_OK


def cmd_demo(rt: Context, args: argparse.Namespace) -> int:
    import os

    from tollgate.app.demo import fresh_home, run_demo

    home = fresh_home(rt.paths.home)
    os.environ["TOLLGATE_HOME"] = str(home)  # before Prefect is imported: the demo's own state folder
    demo_rt = make_context(rt.loaded.path, rt.loaded.env)
    demo_rt.activate()
    try:
        run_demo(demo_rt, interactive=args.interactive)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return EXIT_OK


def cmd_serve(rt: Context, args: argparse.Namespace) -> int:
    from serving.app import serve

    serve(rt.config, rt.paths)
    return EXIT_OK


def cmd_deploy(rt: Context, args: argparse.Namespace) -> int:
    _require_stack(rt)
    from flows.deploy import deploy_model
    from tasks.deployment import RolloutFailed
    from tollgate.registry import RegistryError

    print(
        f"deploying {rt.config.project.registered_model} v{args.version}: shadow -> canary -> approval -> "
        f"production (Prefect UI: {rt.config.servers.prefect_ui_url})",
        flush=True,
    )
    try:
        result = deploy_model(version=args.version, config=str(rt.loaded.path.resolve()), env=rt.loaded.env)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    except RolloutFailed as exc:
        raise CheckFailed(f"rollout of v{args.version} stopped: {exc}. Production is as it was before.") from None
    print(
        f"v{result['version']} is Production (replaced v{result['replaced'] or 'none'}; approved by {result['approved_by']})"
    )
    return EXIT_OK


def cmd_approve(rt: Context, args: argparse.Namespace) -> int:
    _require_stack(rt)
    from tasks.approvals import ApprovalError, answer_approval

    try:
        outcome = answer_approval(args.version, args.by, not args.reject, args.comment)
    except ApprovalError as exc:
        raise CheckFailed(str(exc)) from None
    print(outcome)
    return EXIT_OK


def cmd_rollback(rt: Context, args: argparse.Namespace) -> int:
    import time
    import urllib.error
    import urllib.request

    from tollgate.ledger import current_actor
    from tollgate.secrets import admin_token

    start = time.perf_counter()
    body = json.dumps({"to": args.to, "reason": args.reason, "who": current_actor()}).encode()
    request = urllib.request.Request(
        f"{rt.config.servers.gateway_url}/admin/rollback",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {admin_token(rt.config, rt.paths)}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=rt.config.serving.reload_timeout_s) as resp:
            result = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        if exc.code == 409:
            raise UserError(json.loads(detail).get("error", detail)) from None
        raise CheckFailed(f"gateway refused the rollback ({exc.code}): {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        print(
            f"gateway at {rt.config.servers.gateway_url} is not reachable ({exc}); rolling back through the "
            "rollback flow instead (the gateway will serve it when it starts)",
            file=sys.stderr,
        )
        _require_stack(rt)
        from flows.rollback import rollback

        result = rollback(
            to_version=args.to, reason=args.reason, config=str(rt.loaded.path.resolve()), env=rt.loaded.env
        )
    took = time.perf_counter() - start
    served = "and the gateway serves it" if result.get("served") else "(gateway not updated)"
    print(f"rolled back: v{result['from']} -> v{result['to']} is Production {served}; {took:.2f} s")
    return EXIT_OK


def cmd_drift(rt: Context, args: argparse.Namespace) -> int:
    _require_stack(rt)
    from flows.drift import drift_check
    from tollgate.registry import RegistryError

    rt.paths.reports.mkdir(parents=True, exist_ok=True)
    try:
        result = drift_check(window_hours=args.window, config=str(rt.loaded.path.resolve()), env=rt.loaded.env)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    print(
        f"drift check of v{result['version']} over {result['rows']} logged predictions: "
        f"{'DRIFT DETECTED' if result['detected'] else 'no drift'} (share {result['drift_share']:.0%})"
    )
    print(f"  drifted features: {', '.join(result['drifted']) or 'none'}")
    print(f"  segments with drift: {', '.join(result['segments']) or 'none'}")
    print(f"  Evidently report: {result['report']}; MLflow monitoring run {result['monitoring_run_id']}")
    if args.json:
        print(json.dumps(result, default=str))
    drifted = result["detected"] or bool(result["segments"])
    return EXIT_NO if drifted and args.fail_on_drift else EXIT_OK


def cmd_backfill(rt: Context, args: argparse.Namespace) -> int:
    _require_stack(rt)
    from flows.backfill import ground_truth_backfill
    from tasks.ground_truth import LabelsError
    from tollgate.registry import RegistryError

    try:
        result = ground_truth_backfill(
            labels=str(rt.resolve(args.path)), config=str(rt.loaded.path.resolve()), env=rt.loaded.env
        )
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


def cmd_retrain(rt: Context, args: argparse.Namespace) -> int:
    _require_stack(rt)
    from flows.retrain import retrain
    from tasks.deployment import RolloutFailed
    from tasks.gates import GateRejected

    try:
        result = retrain(reason=args.reason, config=str(rt.loaded.path.resolve()), env=rt.loaded.env)
    except GateRejected as exc:
        _print_verdict(exc.verdict)
        raise CheckFailed(f"the retrained model v{exc.version} was rejected by the gate; it will not serve") from None
    except RolloutFailed as exc:
        raise CheckFailed(f"the retrained model's rollout stopped: {exc}") from None
    if result["status"] == "skipped":
        print(f"retrain skipped: {result['why']}")
        return EXIT_OK
    print(
        f"retrained v{result['version']} on {result['snapshot']} and deployed it (approved by {result['approved_by']})"
    )
    return EXIT_OK


def cmd_hooks_install(rt: Context, args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    top = subprocess.run(["git", "rev-parse", "--git-path", "hooks"], cwd=rt.root, capture_output=True, text=True)
    if top.returncode != 0:
        raise UserError(f"{rt.root} is not a git repository: {top.stderr.strip()}")
    hooks = (rt.root / top.stdout.strip()).resolve()
    hooks.mkdir(parents=True, exist_ok=True)
    target = hooks / "pre-push"
    if target.exists() and not args.force and "tollgate" not in target.read_text(errors="replace"):
        raise UserError(f"{target} exists and is not Tollgate's; pass --force to replace it")
    shutil.copy2(rt.root / "deployments" / "git-hooks" / "pre-push", target)
    target.chmod(0o755)
    print(
        f"installed {target}: pushing main emits tollgate.git.push -> the `ci` deployment "
        f"(needs `tollgate up` so the server and worker run)"
    )
    return EXIT_OK


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every subcommand accepts the global options too."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="pipeline config (default configs/pipeline.yaml)")
    common.add_argument(
        "--env", default=argparse.SUPPRESS, choices=("dev", "staging", "prod"), help="environment overlay (default dev)"
    )

    parser = argparse.ArgumentParser(
        prog="tollgate",
        description="Tollgate: validated, gated, monitored tabular models on Prefect + MLflow.",
        epilog="State lives in $TOLLGATE_HOME (default .tollgate/ in the project root). "
        "Exit codes: 0 ok, 1 a gate or check said no, 2 usage or config error.",
    )
    parser.add_argument(
        "--config",
        default=str(PROJECT_ROOT / "configs" / "pipeline.yaml"),
        help="pipeline config (default configs/pipeline.yaml)",
    )
    parser.add_argument(
        "--env",
        default="dev",
        choices=("dev", "staging", "prod"),
        help="environment overlay from configs/environments/ (default dev)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, fn: Callable[..., int], needs_runtime: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(fn=fn, needs_runtime=needs_runtime)
        return p

    p = add(
        "up",
        "start the local stack (Prefect server, MLflow server, Prefect worker, gateway), wait until healthy, and "
        "apply deployments/prefect.yaml (schedules, event triggers)",
        cmd_up,
    )
    p.add_argument("--no-deployments", action="store_true", help="do not apply deployments/prefect.yaml")
    add("down", "stop every service `up` started (by pid) and free their ports", cmd_down)
    p = add("status", "print each service, its URL, pid, health and memory; exit 1 if any is unhealthy", cmd_status)
    p.add_argument("--json", action="store_true", help="print JSON")

    data = sub.add_parser("data", help="the bundled dataset", parents=[common])
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = data_sub.add_parser(
        "generate",
        parents=[common],
        help="(re)build the bundled training snapshot (tracked by DVC as data.dvc) or, with --scenario, a "
        "later production period in data/periods/",
    )
    p.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default=None,
        help="a production period: none, covariate_drift, concept_drift, segment_shift, faults",
    )
    p.add_argument("--out", default=None, help="write here instead (not DVC-tracked)")
    p.set_defaults(fn=cmd_data_generate, needs_runtime=True)
    p = data_sub.add_parser(
        "track",
        parents=[common],
        help="record the table at dataset.path as the training snapshot (dvc add -> data.dvc, dvc push)",
    )
    p.set_defaults(fn=cmd_data_track, needs_runtime=True)
    p = add(
        "validate",
        "Great Expectations gate on a .csv/.parquet file; per-column failures on stdout; exit 1 on failure",
        cmd_validate,
    )
    p.add_argument("path", help="the file to validate")

    p = add(
        "train",
        "run training_pipeline: validate, train, evaluate, register, gate; prints version, verdict, "
        "stage; exit 1 if validation or the gate says no",
        cmd_train,
    )
    p.add_argument(
        "--data", default=None, help="train on this .csv/.parquet instead of dataset.path (the DVC snapshot)"
    )
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="train even if tracked files have uncommitted changes (the version is tagged git_dirty=true)",
    )
    p.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    p = add("history", "the promotion ledger: every stage transition, who, when, why, evidence run", cmd_history)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "deploy",
        "run deploy_model: shadow -> canary -> approval -> production, automatic rollback on a failed "
        "smoke test; exit 1 if any phase says no",
        cmd_deploy,
    )
    p.add_argument("version", help="the Staging version to roll out")
    p = add(
        "approve", "answer the paused approval of a deploy_model run (the same form as in the Prefect UI)", cmd_approve
    )
    p.add_argument("version", help="the version awaiting approval")
    p.add_argument("--by", required=True, help="approver name (must be on rollout.approvers)")
    p.add_argument("--reject", action="store_true", help="reject instead of approve")
    p.add_argument("--comment", default="", help="why")
    p = add(
        "rollback",
        "restore the previous (or the named) Production release whole; the gateway serves it when the command returns",
        cmd_rollback,
    )
    p.add_argument("--to", default=None, help="the version to restore (default: the previous Production)")
    p.add_argument("--reason", default="manual rollback", help="recorded in the ledger")
    p = add(
        "drift", "run drift_check now: the log window vs the Production release's reference; alert on drift", cmd_drift
    )
    p.add_argument(
        "--window",
        type=float,
        default=None,
        help="hours of the prediction log (default monitoring.drift_window_hours of the Production release)",
    )
    p.add_argument("--fail-on-drift", action="store_true", help="exit 1 when drift is detected")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p = add(
        "backfill",
        "ingest a labels file (prediction_id or entity id, label, label_time) and run "
        "ground_truth_backfill; exit 1 when live performance is degraded",
        cmd_backfill,
    )
    p.add_argument("path", help="labels .csv/.parquet")
    p = add(
        "retrain", "run the guarded retrain flow now (cooldown, weekly budget, same gates and rollout)", cmd_retrain
    )
    p.add_argument("--reason", default="manual", help="recorded with the retrain")
    hooks = sub.add_parser("hooks", help="git hooks", parents=[common])
    hooks_sub = hooks.add_subparsers(dest="hooks_command", metavar="ACTION", required=True)
    p = hooks_sub.add_parser(
        "install",
        parents=[common],
        help="install the pre-push hook: pushing main emits tollgate.git.push (starts ci_pipeline)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing pre-push hook")
    p.set_defaults(fn=cmd_hooks_install, needs_runtime=True)
    add(
        "serve",
        "the prediction gateway in the foreground on servers.gateway_port (tollgate up also starts it)",
        cmd_serve,
    )
    p = add(
        "demo",
        "the whole lifecycle on the bundled dataset in a fresh state folder (.tollgate/demo-*): v1 -> production, "
        "drift alert, backfill, retrain through the gates and rollout, a bad release rolled back automatically",
        cmd_demo,
    )
    p.add_argument(
        "--interactive",
        action="store_true",
        help="wait for a person to approve each promotion in the Prefect UI instead of auto-approving",
    )

    cfg = sub.add_parser("config", help="validate or print the resolved config", parents=[common])
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = cfg_sub.add_parser(
        "check", help="validate the config; every error names file, key path and reason", parents=[common]
    )
    p.set_defaults(fn=cmd_config_check, needs_runtime=False)
    p = cfg_sub.add_parser(
        "show", help="print the resolved config (pipeline.yaml + overlay + TOLLGATE__* vars)", parents=[common]
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(fn=cmd_config_show, needs_runtime=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if not args.needs_runtime:
            return int(args.fn(args))
        rt = make_context(args.config, args.env)
        rt.activate()
        return int(args.fn(rt, args))
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
