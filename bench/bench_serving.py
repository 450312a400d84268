"""Serving throughput and latency: `mlflow models serve -w 2` (baseline) vs the Tollgate gateway with the
prediction log and a shadow challenger ON, single-record requests, the same wrk load, in one run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

from bench.common import BIN, OUT, SAMPLE_FEATURES, BenchStack, ensure_wrk, wait_http
from tollgate.procs import free_port

DURATION_S = 15
CONNECTIONS = (16, 64)
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
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(wrk: str, url: str, script: Path, connections: int) -> dict[str, float]:
    """Requests/s, p50 and p99 (ms) and non-2xx count from one wrk run."""
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{DURATION_S}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _to_ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _to_ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "non_2xx": float(bad.group(1)) if bad else 0.0}


def main(st: BenchStack) -> None:
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": st.mlflow_url}
        print(f"starting mlflow models serve -w 2 on v{st.champion} ...", flush=True)
        mlflow = subprocess.Popen(
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
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
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
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serving.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))
