"""The supervised gateway keeps the fast path (issue 37): every connection accepted on the socket the supervisor
binds is TCP with TCP_NODELAY set, as on the plain gateway. Without it each answer (headers, then body) waits
~40 ms for the client's delayed ACK, which made the gateway `tollgate up` runs 5x slower than `tollgate serve`.

The serving process below runs exactly what the supervisor's child runs (`_listen` -> `run_uvicorn` on that socket
object); only the app differs: it reports TCP_NODELAY of the connections its own process has accepted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tollgate.procs import free_port

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import json, os, socket, sys
    import psutil
    from serving.app import run_uvicorn
    from tollgate.app.supervise import _listen
    from tollgate.config import load_config

    def nodelay_of_accepted(port):
        found = []
        for conn in psutil.Process().net_connections(kind="tcp"):
            if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == port and conn.fd >= 0:
                probe = socket.socket(fileno=os.dup(conn.fd))
                try:
                    found.append(probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                finally:
                    probe.close()
        return found

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = json.dumps({"nodelay": nodelay_of_accepted(int(sys.argv[1]))}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    cfg = load_config(sys.argv[2]).config
    {how}
    """
)
SUPERVISED = "run_uvicorn(app, cfg, _listen('127.0.0.1', int(sys.argv[1])))"
PLAIN = "run_uvicorn(app, cfg.model_copy(update={'servers': cfg.servers.model_copy(update={'gateway_port': int(sys.argv[1])})}))"


@pytest.mark.parametrize("how", [SUPERVISED, PLAIN], ids=["supervisor-socket", "plain"])
def test_accepted_connections_have_tcp_nodelay(how: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE.replace("{how}", how), str(port), str(ROOT / "configs" / "pipeline.yaml")],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=5) as client:
            while True:
                try:
                    answer = client.get(f"http://127.0.0.1:{port}/")
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        proc.kill()
                        pytest.fail(f"the probe server never answered: {proc.communicate()[1][-2000:]}")
                    time.sleep(0.05)
            answer = client.get(f"http://127.0.0.1:{port}/")  # on the kept-alive connection
        nodelay = answer.json()["nodelay"]
        assert nodelay, "the server saw no accepted connection"
        assert all(flag == 1 for flag in nodelay), f"TCP_NODELAY off on accepted connections: {nodelay}"
    finally:
        proc.terminate()
        proc.wait(15)
