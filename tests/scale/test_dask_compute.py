"""The scale tier's Dask part: drift_check's statistics fanned out over prediction-log parts on a Dask
LocalCluster (prefect-dask's DaskTaskRunner, a real Prefect server) equal the in-process path exactly: counts,
statistics, verdicts and the report sample; and a part read in small chunks gives what one read gives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flows.fan_out import over_parts
from tasks.drift import DriftPlan, DriftScope, LogWindow, drift_of_parts, merge_partials
from tasks.profiling import reference_profile
from tests.helpers import bundled_config
from tollgate.predlog import log_parts, part_frames, records_to_frame, write_part
from tollgate.procs import free_port

T0 = 1_767_225_600.0
PARTS, PART_ROWS = 6, 3000


def _records(n: int, seed: int, shift: float) -> list[dict[str, Any]]:
    """n logged answers: version 1 champion and batch rows, some of version 2 and some shadow rows (which a
    drift check of version 1 must not count), numeric features shifted by `shift` standard deviations."""
    rng = np.random.default_rng(seed)
    cfg = bundled_config()
    out = []
    for i in range(n):
        score = float(rng.random())
        out.append(
            {
                "prediction_id": f"p{seed}-{i}",
                "request_id": f"p{seed}-{i}",
                "ts": T0 + seed * PART_ROWS + i,
                "entity_id": f"E{i}",
                "model_version": "2" if i % 11 == 0 else "1",
                "role": ["champion", "batch", "shadow"][i % 3],
                "score": score,
                "decision": int(score >= 0.5),
                "latency_ms": 1.0,
                "proba": None,
                "event_ts": T0,
                "features": {
                    **{c: f"{c}-{rng.integers(3 if seed % 2 else 2)}" for c in cfg.features.categorical},
                    **{c: bool(rng.random() < 0.5) for c in cfg.features.boolean},
                    **{c: float(rng.normal(10 + 2 * shift * (j % 2), 2)) for j, c in enumerate(cfg.features.numeric)},
                },
            }
        )
    return out


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> DriftPlan:
    cfg = bundled_config()
    folder = tmp_path_factory.mktemp("log")
    for k in range(PARTS):
        write_part(records_to_frame(_records(PART_ROWS, k, shift=0.5 * k)), folder / f"seg-{k:04d}.parquet")
    reference = records_to_frame(_records(4000, 99, shift=0.0))
    features = reference[[f"f.{c}" for c in cfg.features.all]].rename(columns=lambda c: c.removeprefix("f."))
    profile = reference_profile(
        features, cfg.features, reference["score"].to_numpy(), cfg.monitoring.reference_bins, features, cfg.dataset
    )
    window = LogWindow(T0 + 1000, T0 + PARTS * PART_ROWS - 1000)  # cuts into the first and the last part
    scope = DriftScope("1", profile, cfg.dataset, cfg.monitoring, window)
    return DriftPlan(scope, [str(p) for p in log_parts(folder)], window.start, chunk_rows=1000)


def _check(
    plan: DriftPlan, address: str, per_task: int = 1
) -> tuple[dict[str, Any], list[dict[str, Any]], pd.DataFrame]:
    partials = over_parts(address, drift_of_parts, len(plan.parts), per_task, plan=plan)
    check, sample = merge_partials(partials, plan.scope)
    reports = [check.overall, *check.segments.values()]
    rows = [{"scope": r.version, **f} for r in reports for f in r.rows_table()]
    stats = [(f.feature, f.statistic, f.rows) for r in reports for f in [*r.features, r.prediction] if f]
    return check.summary(), [*rows, {"stats": stats}], sample


def test_a_part_read_in_chunks_equals_one_read(plan: DriftPlan) -> None:
    path = Path(plan.parts[0])
    chunks = list(part_frames(path, chunk_rows=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 1000]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), pd.read_parquet(path))


def test_drift_on_a_dask_local_cluster_equals_the_in_process_check(live_stack: dict[str, str], plan: DriftPlan) -> None:
    here, here_rows, here_sample = _check(plan, "")
    assert here["rows"] > 0 and here["detected"], "the later parts are shifted: the check must find drift"
    environment = dict(os.environ)
    there, there_rows, there_sample = _check(plan, "local:2", per_task=2)
    assert dict(os.environ) == environment, "the workers' variables stay out of this process's environment"
    assert there == here
    assert there_rows == here_rows  # every statistic, threshold, verdict and count, exactly
    pd.testing.assert_frame_equal(there_sample.reset_index(drop=True), here_sample.reset_index(drop=True))
    # and the chunk size and the grouping change nothing: one read per part, all parts in one call
    whole_plan = DriftPlan(plan.scope, plan.parts, plan.floor, chunk_rows=PART_ROWS)
    whole, whole_rows, whole_sample = _check(whole_plan, "", per_task=PARTS)
    assert (whole, whole_rows) == (here, here_rows)
    pd.testing.assert_frame_equal(whole_sample.reset_index(drop=True), here_sample.reset_index(drop=True))


def test_drift_on_an_existing_dask_cluster_equals_the_in_process_check(
    live_stack: dict[str, str], plan: DriftPlan
) -> None:
    """compute.dask_address tcp://host:port: the README's commands (`dask scheduler`, `dask worker ... --nworkers 2
    --nthreads 1`) started here, and the check fanned out to that cluster gives the in-process result."""
    from distributed import Client

    dask = str(Path(sys.executable).parent / "dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    started = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        time.sleep(1)
        started.append(
            subprocess.Popen(
                [dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        here = _check(plan, "")
        there = _check(plan, address, per_task=3)
        assert there[:2] == here[:2]
        pd.testing.assert_frame_equal(there[2].reset_index(drop=True), here[2].reset_index(drop=True))
    finally:
        for proc in reversed(started):
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_a_local_cluster_worker_hides_only_the_heartbeat_error_of_its_own_close() -> None:
    """A `local:N` cluster's worker processes run flows.fan_out's preload: at the end of a run that succeeded, a
    heartbeat in flight when the worker closes logs "Failed to communicate with scheduler during heartbeat" with a
    traceback on the user's terminal (CI saw it after `tollgate drift` on Postgres/S3). The worker drops exactly that
    record while it closes; while it runs, the record and every other error still show."""
    import logging
    from types import SimpleNamespace

    from distributed import Client, LocalCluster
    from distributed.core import Status

    from flows.fan_out import dask_runner

    def installed(dask_worker: Any) -> list[bool]:
        return [getattr(f, "worker", None) is dask_worker for f in logging.getLogger("distributed.worker").filters]

    with LocalCluster(**dask_runner("local:1").cluster_kwargs) as cluster, Client(cluster) as client:
        assert list(client.run(installed).values()) == [[True]]

    (heartbeat,) = [f for f in logging.getLogger("distributed.worker").filters if hasattr(f, "worker")] or [None]
    assert heartbeat is None, "the preload runs in the workers, not in the process that started the cluster"

    def shown(status: Status, message: str) -> bool:
        from flows.fan_out import _HeartbeatAtClose

        record = logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, message, None, None)
        return _HeartbeatAtClose(SimpleNamespace(status=status)).filter(record)

    failed = "Failed to communicate with scheduler during heartbeat."
    assert not shown(Status.closing, failed) and not shown(Status.closed, failed)
    assert shown(Status.running, failed), "a running worker that cannot reach its scheduler still says so"
    assert shown(Status.closing, "Unexpected exception during heartbeat. Closing worker.")
