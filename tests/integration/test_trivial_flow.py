"""A flow runs against the session's real Prefect server and logs a run to the real MLflow server."""

from __future__ import annotations

import asyncio

import mlflow
from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId


@flow(name="tollgate-smoke")
def smoke_flow(value: float) -> str:
    get_run_logger().info("logging %s to MLflow", value)
    mlflow.set_experiment("tollgate-smoke")
    with mlflow.start_run() as run:
        mlflow.log_metric("value", value)
        return run.info.run_id


def test_flow_run_is_recorded_by_prefect_and_mlflow(live_stack: dict[str, str]) -> None:
    state = smoke_flow(0.75, return_state=True)
    assert state.is_completed()
    run_id = state.result()

    async def read() -> list:  # type: ignore[type-arg]
        async with get_client() as client:
            assert str(client.api_url).rstrip("/") == live_stack["prefect"].rstrip("/")
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )

    runs = asyncio.run(read())
    assert len(runs) == 1 and runs[0].state_type.value == "COMPLETED"
    logged = MlflowClient(tracking_uri=live_stack["mlflow"]).get_run(run_id)
    assert logged.data.metrics["value"] == 0.75
