"""fan_out: one task run per prediction-log part, on the Dask cluster that `compute.dask_address` names, as a
subflow with prefect-dask's DaskTaskRunner; with no address the same task functions run here, in order.

The tasks return partial results (counts, joined rows) that the calling flow merges; they merge to the same
answer whichever way they ran, so the address changes where the work happens, never what it finds."""

from __future__ import annotations

import logging
from typing import Any

from prefect import Flow, unmapped


def dask_runner(address: str) -> Any:
    """prefect-dask's DaskTaskRunner for an address: `local:N` starts a LocalCluster of N single-threaded worker
    processes for the subflow run (stopped after it), `tcp://host:port` connects to an existing scheduler."""
    from prefect_dask import DaskTaskRunner

    if address.startswith("local:"):
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": int(address.removeprefix("local:")),
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
                "silence_logs": logging.WARNING,
            },
        )
    return DaskTaskRunner(address=address)


def over_parts(address: str, task: Any, count: int, **shared: Any) -> list[Any]:
    """`task(**shared, index=i)` (a Tollgate task) for every i < count, results in index order: task runs on the configured Dask
    cluster at `address` (compute.dask_address), or plain calls in this process when it is empty. A failed part
    fails the call."""
    if not address or count == 0:
        return [task.fn(**shared, index=i) for i in range(count)]

    def fan_out() -> list[Any]:
        futures = task.map(index=list(range(count)), **{k: unmapped(v) for k, v in shared.items()})
        return [future.result() for future in futures]

    subflow = Flow(fan_out, name=f"fan_out-{task.name}", task_runner=dask_runner(address), validate_parameters=False)
    return subflow()
