"""Serving throughput and latency: `mlflow models serve -w 2` (baseline, started with a user's default
environment) vs the Tollgate gateway as `tollgate up` runs it (supervised), with the prediction log and a shadow
challenger ON, single-record requests, the same wrk load, in one run. Then one sequential client against the
supervised gateway and a plain `tollgate serve` of the same release (issue 37: they must answer alike)."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import BIN, OUT, SAMPLE_FEATURES, BenchStack, ensure_wrk, record_results, wait_http
from tollgate.gateway_client import GatewayClient
from tollgate.procs import free_port
from tollgate.secrets import admin_token

DURATION_S = 15
CONNECTIONS = (16, 64)
SEQUENTIAL_WARMUP, SEQUENTIAL_N, SEQUENTIAL_BLOCK = 20, 1000, 25  # 1,000 samples: a p99 of 10 slowest
RECORD = SAMPLE_FEATURES
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, string.format(BODY, counter))
end
"""


def _script(folder: Path, name: str, body_format: str) -> Path:
    path = folder / f"{name}.lua"
    path.write_text(LUA.replace("BODY", json.dumps(body_format)))
    return path


def _to_ms(text: str) -> float:
    """wrk's latency text ('812.00us', '1.23ms', '1.02s', '1.00m') in milliseconds."""
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if found is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A server process of the benchmark's, quiet, in its own process group (so it can be killed whole)."""
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def run_wrk(wrk: str, url: str, script: Path, connections: int) -> dict[str, float]:
    """Requests/s, p50 and p99 (ms) and non-2xx count from one wrk run."""
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{DURATION_S}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    try:
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        # anchored to the Latency Distribution lines: a Thread Stats cell such as "74.50%" also ends in "50%"
        p50 = _to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
        p99 = _to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    except (AttributeError, ValueError) as exc:
        raise RuntimeError(f"could not read wrk's output for {url} ({exc}):\n{out}") from exc
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "non_2xx": float(bad.group(1)) if bad else 0.0}


def main(st: BenchStack) -> None:
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": st.mlflow_url}
        # A user's default environment: the stack turns MLflow's own (pickle/skops-list) loaders off, which is
        # exactly what `mlflow models serve` needs to load the model.
        env.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
        print(f"starting mlflow models serve -w 2 on v{st.champion} ...", flush=True)
        mlflow = _start(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{st.model}/{st.champion}",
                "--env-manager",
                "local",
                "-w",
                "2",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", 180)
            rec = json.dumps(RECORD)[1:-1]
            mlflow_script = _script(folder, "mlflow", '{"dataframe_records": [{' + rec.replace("%", "%%") + "}]}")
            gateway_script = _script(folder, "gateway", '{"customer_id": "C%d", ' + rec.replace("%", "%%") + "}")
            print("warming both servers up (5 s each, not measured) ...", flush=True)
            for url, script in (
                (f"http://127.0.0.1:{port}/invocations", mlflow_script),
                (f"{st.gateway_url}/predict", gateway_script),
            ):
                subprocess.run([wrk, "-t1", "-c16", "-d5s", "-s", str(script), url], capture_output=True, check=True)
            results = {}
            for conns in CONNECTIONS:
                print(f"wrk, {conns} connections, {DURATION_S} s each ...", flush=True)
                results[conns] = {
                    "mlflow": run_wrk(wrk, f"http://127.0.0.1:{port}/invocations", mlflow_script, conns),
                    "gateway": run_wrk(wrk, f"{st.gateway_url}/predict", gateway_script, conns),
                }
        finally:
            os.killpg(mlflow.pid, signal.SIGKILL)
        gateway = st.ctx.gateway()
        state = gateway.state()
        gateway.close()
        replicas = replicas_pair(st, wrk, gateway_script)
    sequential = sequential_pair(st)
    print("\nserving benchmark: single-record POSTs, wrk -t1, same machine, one run")
    print(f"{'conns':>5}  {'server':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for conns, pair in results.items():
        for name, r in pair.items():
            print(
                f"{conns:>5}  {name:<8} {r['rps']:>9.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['non_2xx']:>8.0f}"
            )
        g, m = pair["gateway"], pair["mlflow"]
        print(
            f"       ratio: throughput {g['rps'] / m['rps']:.1f}x mlflow (target >= 25x); "
            f"p99 {g['p99_ms'] / m['p99_ms']:.2f} of mlflow's (target <= 0.20)"
        )
    print(
        f"gateway logged shadow predictions during the run: {state['shadow_compared']} compared, "
        f"mean batch {state['batch_rows'] / max(state['batches'], 1):.1f} rows"
    )
    one, two = replicas["single"], replicas["replicas2"]
    print(
        f"\n64 connections, {DURATION_S} s each, one after the other: the stack's gateway (1 serving process) "
        f"{one['rps']:.1f} req/s, p99 {one['p99_ms']:.1f} ms; serving.replicas 2 on the same release "
        f"{two['rps']:.1f} req/s, p99 {two['p99_ms']:.1f} ms: {two['rps'] / one['rps']:.2f}x "
        f"(both serve {replicas['serving']})"
    )
    sup, plain = sequential["supervised"], sequential["plain"]
    ratio = sup["p50_ms"] / plain["p50_ms"]
    print(
        f"\none sequential client per gateway, {SEQUENTIAL_N} single-record POSTs after {SEQUENTIAL_WARMUP} warm-up, "
        f"taking turns in blocks of {SEQUENTIAL_BLOCK}:\n"
        f"  supervised gateway (tollgate up): p50 {sup['p50_ms']:.2f} ms, p90 {sup['p90_ms']:.2f} ms, "
        f"p99 {sup['p99_ms']:.2f} ms\n"
        f"  plain gateway (tollgate serve):   p50 {plain['p50_ms']:.2f} ms, p90 {plain['p90_ms']:.2f} ms\n"
        f"  supervised / plain p50: {ratio:.2f} (target <= 1.1)"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serving.json").write_text(
        json.dumps(
            {**{str(k): v for k, v in results.items()}, "sequential": sequential, "replicas": replicas}, indent=2
        )
    )
    figures = {
        "serving_c1_p50_ms": sup["p50_ms"],
        "serving_c1_p99_ms": sup["p99_ms"],
        "serving_c1_p50_plain_ms": plain["p50_ms"],
        "serving_supervised_over_plain": ratio,
        "replicas1_c64_rps": one["rps"],
        "replicas2_c64_rps": two["rps"],
        "replicas2_c64_p99_ms": two["p99_ms"],
        "replicas2_over_single_c64": two["rps"] / one["rps"],
    }
    for conns, pair in results.items():
        g, m = pair["gateway"], pair["mlflow"]
        figures |= {
            f"serving_c{conns}_rps": g["rps"],
            f"serving_c{conns}_p99_ms": g["p99_ms"],
            f"serving_c{conns}_mlflow_rps": m["rps"],
            f"serving_c{conns}_throughput_ratio": g["rps"] / m["rps"],  # issue 13's names
            f"serving_c{conns}_p99_ratio": g["p99_ms"] / m["p99_ms"],
        }
    record_results(figures)


def _timed_posts(client: httpx.Client, url: str, n: int, offset: int) -> list[float]:
    """Milliseconds of each of `n` sequential single-record POSTs on one kept-alive client."""
    times = []
    for i in range(offset, offset + n):
        started = time.perf_counter()
        resp = client.post(f"{url}/predict", json={"customer_id": f"S{i}", **RECORD})
        times.append((time.perf_counter() - started) * 1000)
        resp.raise_for_status()
    return times


def sequential_latency(urls: dict[str, str]) -> dict[str, dict[str, float]]:
    """p50/p90 (ms) per gateway of SEQUENTIAL_N single-record POSTs from one kept-alive client each, after a
    warm-up; the gateways take turns in blocks of SEQUENTIAL_BLOCK, so a busy moment of the machine falls on both."""
    clients = {name: httpx.Client(timeout=10) for name in urls}
    times: dict[str, list[float]] = {name: [] for name in urls}
    try:
        for name, url in urls.items():
            _timed_posts(clients[name], url, SEQUENTIAL_WARMUP, 0)
        for block in range(SEQUENTIAL_N // SEQUENTIAL_BLOCK):
            for name, url in urls.items():
                offset = SEQUENTIAL_WARMUP + block * SEQUENTIAL_BLOCK
                times[name] += _timed_posts(clients[name], url, SEQUENTIAL_BLOCK, offset)
    finally:
        for client in clients.values():
            client.close()
    return {
        name: {
            "p50_ms": statistics.median(t),
            "p90_ms": statistics.quantiles(t, n=10)[8],
            "p99_ms": statistics.quantiles(t, n=100)[98],
        }
        for name, t in times.items()
    }


def replicas_pair(st: BenchStack, wrk: str, script: Path) -> dict[str, Any]:
    """wrk at 64 connections against the stack's gateway (one serving process) and, right after it, against a
    supervised gateway with serving.replicas 2 on another port, serving the same release; the challenger's lease
    renewed on both first, so both score the same shadow (or, if it lapsed earlier in the run, neither does)."""
    port = free_port()
    env = {**st.child_env(), "TOLLGATE__SERVERS__GATEWAY_PORT": str(port), "TOLLGATE__SERVING__REPLICAS": "2"}
    print(f"starting a gateway with serving.replicas 2 on port {port} ...", flush=True)
    proc = _start([sys.executable, "-m", "tollgate.app.cli", "serve", "--supervise"], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 120)
        served = set()
        for base in (st.gateway_url, url):
            client = GatewayClient(base, admin_token(st.ctx.config, st.ctx.paths))
            client.lease(st.challenger, 600)
            state = client.state()
            shadow = f" + v{state['challenger']} in {state['mode']}" if state["challenger"] else ", no challenger"
            served.add(f"v{state['champion']}{shadow}")
            client.close()
        subprocess.run(
            [wrk, "-t1", "-c64", "-d5s", "-s", str(script), f"{url}/predict"], capture_output=True, check=True
        )
        print(f"wrk, 64 connections, {DURATION_S} s each: 1 serving process, then 2 replicas ...", flush=True)
        single = run_wrk(wrk, f"{st.gateway_url}/predict", script, 64)
        two = run_wrk(wrk, f"{url}/predict", script, 64)
    finally:
        _stop(proc, 30)
    return {"single": single, "replicas2": two, "serving": " / ".join(sorted(served))}


def sequential_pair(st: BenchStack) -> dict[str, dict[str, float]]:
    """The stack's supervised gateway and a plain `tollgate serve` of the same release on another port, measured
    by one sequential client each, taking turns."""
    port = free_port()
    env = {**st.child_env(), "TOLLGATE__SERVERS__GATEWAY_PORT": str(port)}
    print(f"starting a plain `tollgate serve` on port {port} ...", flush=True)
    plain = _start([sys.executable, "-m", "tollgate.app.cli", "serve"], env)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120)
        return sequential_latency({"supervised": st.gateway_url, "plain": f"http://127.0.0.1:{port}"})
    finally:
        _stop(plain, 20)


def _stop(proc: subprocess.Popen[bytes], wait_s: float) -> None:
    """SIGTERM a server of the benchmark's; its whole process group SIGKILLed if it is not gone in `wait_s`."""
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
