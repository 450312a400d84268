"""Commands for the local stack: up, down, status, serve, and the git hook that starts ci_pipeline."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from tollgate.app.commands.base import EXIT_NO, EXIT_OK, JSON, Command, UserError, arg, print_json, table, warn
from tollgate.app.commands.history import consistency
from tollgate.app.githook import HookError, install_pre_push
from tollgate.app.stack import DeploymentTarget, Stack, apply_deployments
from tollgate.context import Context
from tollgate.paths import PROJECT_ROOT
from tollgate.signals import alert_failures, read_signals

SERVICE_COLUMNS = ("service", "url", "pid", "healthy", "rss_mb")
MODEL_COLUMNS = ("model", "failed_alerts", "last_failed_alert", "signals", "signals_updated")
ROLLOUT_COLUMNS = ("model", "version", "phase", "share", "since", "controller", "lease_left_s", "flow_run", "url")


def stack_of(ctx: Context) -> Stack:
    """The stack of this context's state folder (its gateway serves this config)."""
    return Stack(ctx.config.servers, ctx.paths, config_path=ctx.loaded.path, env=ctx.env)


def state_of(ctx: Context) -> dict[str, str]:
    """Where the stack keeps its state and runs its heavy steps, as `status` shows it (no credential in it)."""
    servers, paths = ctx.config.servers, ctx.paths
    local_mlflow = servers.mlflow_tracking_uri is None
    return {
        "prefect": f"remote {servers.prefect_api_url}"
        if servers.prefect_api_url
        else servers.database_url("prefect") or f"sqlite under {paths.prefect_home}",
        "mlflow": f"remote {servers.mlflow_tracking_uri}"
        if not local_mlflow
        else servers.database_url("mlflow") or f"sqlite {paths.mlflow_db}",
        "artifacts": (servers.artifacts_uri or str(paths.mlflow_artifacts)) if local_mlflow else "the MLflow server's",
        "compute": ctx.config.compute.dask_address or "in process",
        "predictions": ctx.config.serving.log_uri or str(paths.prediction_log),
    }


def code_root(ctx: Context) -> Path:
    """The folder with flows/ and deployments/prefect.yaml: the config's project when it has them (a clone or
    copy of this repository), else the code Tollgate runs from (a config kept elsewhere)."""
    return ctx.root if (ctx.root / "deployments" / "prefect.yaml").exists() else PROJECT_ROOT


def up(ctx: Context, args: argparse.Namespace) -> int:
    stack = stack_of(ctx)
    stack.up()
    if not args.no_deployments and ctx.config.servers.prefect_api_url is None:
        # This config's deployments (named after its model); another project's, applied with its own
        # `--config ... up`, stay as they are.
        apply_deployments(code_root(ctx), ctx.config.servers, ctx.paths, DeploymentTarget.of(ctx))
    print(table(stack.status(), SERVICE_COLUMNS))
    return EXIT_OK


def down(ctx: Context, args: argparse.Namespace) -> int:
    stack_of(ctx).down()
    return EXIT_OK


def _when(epoch: float | None) -> str | None:
    return None if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def model_signals(ctx: Context) -> list[dict[str, Any]]:
    """Per registered model of the config: failed alert deliveries and the latest drift/live signals."""
    rows = []
    for model in (ctx.config.project.registered_model,):
        failures = alert_failures(ctx.paths, model)
        signals = read_signals(ctx.paths, model)
        updated = signals.pop("updated_at", None)
        rows.append(
            {
                "model": model,
                "failed_alerts": len(failures),
                "last_failed_alert": failures[-1] if failures else None,
                "signals": signals,
                "signals_updated": _when(updated),
            }
        )
    return rows


def _signal_text(signals: dict[str, Any]) -> str:
    shown = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(signals.items()))
    return ", ".join(shown) or "none recorded yet"


def _failure_text(failure: dict[str, Any] | None) -> str | None:
    return None if failure is None else f"{failure.get('event')} at {_when(failure.get('at'))}"


def status(ctx: Context, args: argparse.Namespace) -> int:
    from tollgate.app.supervise import restart_count

    services = stack_of(ctx).status()
    models = model_signals(ctx)
    restarts = restart_count(ctx.paths)
    healthy = all(r["healthy"] for r in services)
    problems = consistency(ctx) if healthy else []
    rollouts = rollouts_of(ctx) if healthy else []
    gateway = gateway_of(ctx) if healthy and any(r["service"] == "gateway" for r in services) else {}
    orphaned = [r for r in rollouts if r["orphaned"]]
    exposed, named = ctx.paths.exposed()
    if args.json:
        print_json(
            {
                "services": services,
                "models": models,
                "gateway_restarts": restarts,
                "disagreements": problems,
                "rollouts": rollouts,
                "state_folder_exposed": named if exposed <= len(named) else [*named, f"... {exposed} in all"],
                "state_folder": str(ctx.paths.home),
                "state": state_of(ctx),
                "gateway": gateway,
            }
        )
    else:
        print(table(services, SERVICE_COLUMNS))
        print("state: " + "; ".join(f"{k} {v}" for k, v in state_of(ctx).items()))
        if gateway:
            print(_gateway_text(gateway))
        if restarts:
            print(f"gateway restarted by its supervisor {restarts} times ({ctx.paths.gateway_restarts})")
        if problems:
            print("\n".join(f"DISAGREES: {p}" for p in problems))
        if exposed:
            print(
                f"WARNING: {exposed} entries in the state folder are open to other users (e.g. {', '.join(named)}); "
                f"it holds prediction rows, databases and logins: chmod -R go-rwx {ctx.paths.home}"
            )
        rows = [
            {**m, "last_failed_alert": _failure_text(m["last_failed_alert"]), "signals": _signal_text(m["signals"])}
            for m in models
        ]
        print()
        print(table(rows, MODEL_COLUMNS))
        print()
        if rollouts:
            print(table([{**r, "share": f"{r['share']:.0%}"} for r in rollouts], ROLLOUT_COLUMNS))
        else:
            print(f"rollouts in flight: none for {ctx.config.project.registered_model}")
        print(f"state folder: {ctx.paths.home}")
    for r in orphaned:  # on stderr too, so a script that only checks the exit code still says why
        warn(
            f"ORPHANED rollout: v{r['version']} ({r['phase']}) has no live controller; the gateway drops it when its "
            f"lease lapses (in {r['lease_left_s']} s), or now with `tollgate rollout cancel {r['version']}`"
        )
    return EXIT_OK if healthy and not problems and not orphaned else EXIT_NO


def gateway_of(ctx: Context) -> dict[str, Any]:
    """The gateway's /admin/state, summed over its replicas (each listed with its own port); {} when the gateway
    is not part of this stack or does not answer (the services table says so)."""
    from tollgate.gateway_client import GatewayError

    client = ctx.gateway()
    try:
        return client.state()
    except GatewayError as exc:
        warn(f"could not read the gateway's state: {exc}")
        return {}
    finally:
        client.close()


def _gateway_text(state: dict[str, Any]) -> str:
    predictions = sum(state.get("predictions", {}).values())
    errors = ", ".join(f"{k} {n}" for k, n in sorted(state.get("errors", {}).items())) or "none"
    line = f"gateway: {predictions} predictions, errors: {errors}"
    replicas = state.get("replicas")
    if not replicas:
        return line
    each = "; ".join(
        f"replica {r['replica']} port {r['port']}: "
        + (f"pid {r.get('pid')}, {r.get('predictions', 0)} predictions" if r["ok"] else "NOT ANSWERING")
        for r in replicas
    )
    agree = "" if state.get("replicas_agree") else " (REPLICAS DISAGREE on what they serve)"
    return f"{line}, summed over {len(replicas)} replicas{agree}\n  {each}"


def rollouts_of(ctx: Context) -> list[dict[str, Any]]:
    """The configured model's rollouts in flight (tasks/controller.py), as dicts; [] when Prefect cannot say."""
    from tasks.controller import rollouts_in_flight

    try:
        return [r.to_dict() for r in rollouts_in_flight(ctx)]
    except Exception as exc:  # a status line must not fail on it: the services table already says what is down
        warn(f"could not read the rollouts in flight: {exc}")
        return []


def serve(ctx: Context, args: argparse.Namespace) -> int:
    if args.supervise:
        from tollgate.app.supervise import supervise_gateway

        return supervise_gateway(ctx)
    if ctx.config.serving.replicas > 1:
        raise UserError(
            f"serving.replicas is {ctx.config.serving.replicas}: several serving processes need the supervisor that "
            "forks them (tollgate serve --supervise, what tollgate up runs)"
        )
    from serving.app import serve as serve_gateway

    serve_gateway(ctx.config, ctx.paths)
    return EXIT_OK


def hooks_install(ctx: Context, args: argparse.Namespace) -> int:
    try:
        target = install_pre_push(ctx.root, force=args.force)
    except HookError as exc:
        raise UserError(str(exc)) from None
    print(
        f"installed {target}: pushing main emits tollgate.git.push -> the `ci` deployment "
        f"(needs `tollgate up` so the server and worker run)"
    )
    return EXIT_OK


COMMANDS = [
    Command(
        "up",
        "start the local stack (Prefect server, MLflow server, Prefect worker, gateway), wait until healthy, and "
        "apply deployments/prefect.yaml (schedules, event triggers) for --config/--env; on a running stack "
        "this only applies that config's deployments (one set per registered model)",
        up,
        (arg("--no-deployments", action="store_true", help="do not apply deployments/prefect.yaml"),),
    ),
    Command("down", "stop every service `up` started (by pid) and free their ports", down),
    Command(
        "status",
        "print each service, its URL, pid, health and memory, and per model the failed alert deliveries and the "
        "latest drift and live-performance signals, and any disagreement between the ledger, registry stages, "
        "aliases and what the gateway serves (as history --verify), and the model's rollouts in flight (as rollout "
        "status); exit 1 if a service is unhealthy, anything disagrees or a rollout is orphaned (controller gone, "
        "challenger still live)",
        status,
        (JSON,),
    ),
    Command(
        "serve",
        "the prediction gateway in the foreground on servers.gateway_port (tollgate up starts it supervised)",
        serve,
        (
            arg(
                "--supervise",
                action="store_true",
                help="restart the serving process whenever it dies (kill -9, crash), keeping the port open; "
                "restarts are logged and counted in $TOLLGATE_HOME/gateway-restarts.jsonl",
            ),
        ),
    ),
    Command(
        "hooks install",
        "install the pre-push hook: pushing main emits tollgate.git.push (starts ci_pipeline)",
        hooks_install,
        (arg("--force", action="store_true", help="replace an existing pre-push hook"),),
        activate=False,
    ),
]
