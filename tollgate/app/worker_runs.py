"""`tollgate deploy` hands the rollout to the worker (issue 34.1): a flow run of the project's `deploy`
deployment, followed from the terminal by its state and logs. The terminal only watches: Ctrl-C, a closed
terminal or `kill -9` of the command leave the run going on the worker."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from tollgate.context import Context

LOG_SLACK_S = 30.0  # each log read goes back this far before the newest line shown (lines arrive in batches)
CONFIG_ENV_PREFIX = "TOLLGATE__"  # config overrides in the terminal's environment travel to the flow-run process


def deployment_name(ctx: Context) -> str:
    """`deploy_model/deploy-<model>`: the project's deploy deployment as `tollgate up` applies it."""
    from tollgate.app.stack import DeploymentTarget

    return f"deploy_model/{DeploymentTarget.of(ctx).name('deploy')}"


def has_deployment(ctx: Context) -> bool:
    """Whether the project's deploy deployment is on the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(deployment_name(ctx))
        except ObjectNotFound:
            return False
    return True


def config_overrides(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The TOLLGATE__* variables of this process: the flow-run process on the worker resolves the config the
    terminal resolved (the same file, env and overrides)."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.startswith(CONFIG_ENV_PREFIX)}


def start_run(ctx: Context, version: str) -> Any:
    """Create a flow run of the deploy deployment for `version` (config path and env as parameters); returns it
    at once, for the worker to pick up."""
    from prefect.deployments import run_deployment

    return run_deployment(
        deployment_name(ctx),
        parameters={"version": str(version), "config": str(Path(ctx.config_path).resolve()), "env": ctx.env},
        job_variables={"env": config_overrides()},
        timeout=0,
        as_subflow=False,
    )


def read_run(flow_run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id))


def run_url(ctx: Context, flow_run_id: str) -> str:
    return f"{ctx.config.servers.prefect_ui_url}/runs/flow-run/{flow_run_id}"


def follow(flow_run_id: str, say: Callable[[str], None], poll_s: float = 1.0) -> Any:
    """Print the run's log lines as they arrive until it reaches a final state; returns the run as it ended."""
    seen: dict[str, Any] = {}
    while True:
        for line in new_log_lines(flow_run_id, seen):
            say(line)
        run = read_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            time.sleep(poll_s)  # the flow-run process sends its last lines in a batch
            for line in new_log_lines(flow_run_id, seen):
                say(line)
            return run
        time.sleep(poll_s)


def new_log_lines(flow_run_id: str, seen: dict[str, Any]) -> list[str]:
    """The run's log lines not shown yet, in time order (`seen`: log id -> timestamp, updated)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
    from prefect.client.schemas.sorting import LogSort

    newest = max(seen.values(), default=None)
    after = LogFilterTimestamp(after_=newest - timedelta(seconds=LOG_SLACK_S)) if newest else None
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)]), timestamp=after),
            sort=LogSort.TIMESTAMP_ASC,
            limit=200,
        )
    lines = []
    for entry in logs:
        if str(entry.id) in seen:
            continue
        seen[str(entry.id)] = entry.timestamp
        lines.append(f"  {entry.timestamp.astimezone().strftime('%H:%M:%S')} {entry.message}")
    return lines
