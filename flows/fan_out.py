"""fan_out: one task run per span of prediction-log parts, on the Dask cluster that `compute.dask_address` names, as a
subflow with prefect-dask's DaskTaskRunner; with no address the same task functions run here, in order.

The tasks return partial results (counts, joined rows) that the calling flow merges; they merge to the same
answer whichever way they ran, so the address changes where the work happens, never what it finds."""

from __future__ import annotations

import logging
import os
from typing import Any

from prefect import Flow, unmapped


def dask_runner(address: str) -> Any:
    """prefect-dask's DaskTaskRunner for an address: `local:N` starts a LocalCluster of N single-threaded worker
    processes for the subflow run (stopped after it), `tcp://host:port` connects to an existing scheduler."""
    import dask
    from prefect_dask import DaskTaskRunner

    if address.startswith("local:"):
        # Worker memory: Dask sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which turns off glibc's adaptive
        # mmap threshold, so every large array costs fresh pages. Arrays up to 64 MiB from the heap instead, kept
        # up to 1 GiB: a fresh worker read 40 drift parts in 6.2 s of CPU instead of 7.7 s (5.0 s once warm).
        dask.config.set(
            {
                "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 1 << 30,
                "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 64 << 20,
            }
        )
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": int(address.removeprefix("local:")),
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
                "silence_logs": logging.WARNING,
                # each worker process runs this module's dask_setup (distributed's worker preload)
                "preload": [__name__],
            },
        )
    return DaskTaskRunner(address=address)


class _HeartbeatAtClose(logging.Filter):
    """Drops distributed's "Failed to communicate with scheduler during heartbeat" error (with its traceback) when
    the worker is already closing: a heartbeat in flight when the cluster stops reads from the connection pool the
    closing worker has just shut, which is the end of a run that succeeded, not a fault. While the worker runs,
    the same error still shows."""

    def __init__(self, worker: Any) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        closing = self.worker.status.name in ("closing", "closing_gracefully", "closed")  # distributed's Status
        return not (closing and record.getMessage().startswith("Failed to communicate with scheduler during heartbeat"))


def dask_setup(worker: Any) -> None:
    """distributed's preload hook, run in each worker process of a `local:N` cluster as it starts."""
    logging.getLogger("distributed.worker").addFilter(_HeartbeatAtClose(worker))


def over_parts(address: str, task: Any, count: int, per_task: int, **shared: Any) -> list[Any]:
    """`task(**shared, first=a, last=b)` (a Tollgate task) over parts 0..count-1 in spans of `per_task` parts,
    results in order: task runs on the Dask cluster at `address` (compute.dask_address), or plain calls in this
    process when it is empty. A failed span fails the call."""
    spans = [(a, min(a + per_task, count)) for a in range(0, count, per_task)]
    if not address or not spans:
        return [task.fn(**shared, first=a, last=b) for a, b in spans]

    def fan_out() -> list[Any]:
        pinned = {k: unmapped(v) for k, v in shared.items()}
        futures = task.map(first=[a for a, _ in spans], last=[b for _, b in spans], **pinned)
        return [future.result() for future in futures]

    subflow = Flow(fan_out, name=f"fan_out-{task.name}", task_runner=dask_runner(address), validate_parameters=False)
    before = dict(os.environ)
    try:
        return subflow()
    finally:
        # distributed's Nanny writes its workers' variables (OMP_NUM_THREADS, MALLOC_*, PYTHONHASHSEED) into this
        # process's environment before it spawns them: put ours back, so no later child process inherits them
        for name in set(os.environ) - set(before):
            del os.environ[name]
        os.environ.update(before)
