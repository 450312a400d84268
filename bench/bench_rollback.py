"""Rollback time: seconds from launching `tollgate rollback` to the first answer from the restored version,
while a client keeps sending requests (target < 1 s). Baseline: the 1 s target."""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time

from bench.common import BIN, OUT, ROOT, SAMPLE_FEATURES, BenchStack

ROUNDS = 5


def main(st: BenchStack) -> None:
    import httpx

    reg, gateway = st.ctx.registry, st.ctx.gateway()
    record = {"customer_id": "C1", **SAMPLE_FEATURES}
    results, walls, failures = [], [], 0
    for round_ in range(ROUNDS):
        # put the challenger in Production (as a release would), then roll back to the champion
        reg.transition(st.challenger, "Production", f"bench round {round_}: release", None)
        gateway.reload()
        seen: dict[str, float] = {}
        stop = threading.Event()

        def poll(client: httpx.Client, stop: threading.Event, seen: dict[str, float], target: str) -> None:
            nonlocal failures
            while not stop.is_set():
                resp = client.post(f"{st.gateway_url}/predict", json=record)
                if resp.status_code != 200:
                    failures += 1
                elif resp.json()["model_version"] == target and "first" not in seen:
                    seen["first"] = time.perf_counter()

        with httpx.Client(timeout=10) as client:
            thread = threading.Thread(target=poll, args=(client, stop, seen, st.champion), daemon=True)
            thread.start()
            time.sleep(0.3)
            start = time.perf_counter()
            proc = subprocess.run(
                [str(BIN / "tollgate"), "rollback", "--reason", "bench"],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=st.child_env(),
            )
            wall = time.perf_counter() - start
            time.sleep(0.3)
            stop.set()
            thread.join(5)
        if proc.returncode != 0:
            raise RuntimeError(f"tollgate rollback failed: {proc.stderr}")
        results.append(seen["first"] - start)
        walls.append(wall)
        print(
            f"  round {round_ + 1}: first restored answer after {results[-1]:.3f} s (command {wall:.3f} s)",
            flush=True,
        )
    gateway.close()
    median = statistics.median(results)
    print("\nrollback benchmark: `tollgate rollback` launched as a process, a client polling the gateway")
    print(
        f"  first answer from the restored version: median {median:.3f} s, max {max(results):.3f} s "
        f"over {ROUNDS} rounds; command wall median {statistics.median(walls):.3f} s"
    )
    print(
        f"  ratio to the 1 s target: {median / 1.0:.2f} (target < 1.00); failed requests during rollbacks: {failures}"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rollback.json").write_text(json.dumps({"seconds": results, "wall": walls, "failures": failures}))
