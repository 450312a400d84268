"""The gateway under supervision (`tollgate serve --supervise`, what `tollgate up` runs).

The supervisor imports the gateway code once, binds the listening socket once, then forks the serving process
from itself and forks a new one whenever it dies (a crash, an OOM kill, `kill -9`). Because the socket stays
open in the supervisor, connections that arrive during a restart wait in the kernel's backlog instead of being
refused, and a warm fork (nothing to import) serves again in about a second, on what the registry says is
Production, loaded through the same provenance checks as always. Each restart is a line in
`$TOLLGATE_HOME/gateway-restarts.jsonl` (`StatePaths.gateway_restarts`) (counted on `/metrics` and by `tollgate status`) and in the gateway log.
SIGTERM/SIGINT to the supervisor stop the serving process gracefully and then the supervisor.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from types import FrameType

from tollgate.context import Context
from tollgate.paths import StatePaths

log = logging.getLogger("tollgate.supervisor")
QUICK_EXIT_S = 2.0  # a serving process that dies sooner than this counts as a crash loop (backoff)
MAX_BACKOFF_S = 10.0


def restart_count(paths: StatePaths) -> int:
    """How many restarts the supervisor made (lines of paths.gateway_restarts)."""
    path = paths.gateway_restarts
    return sum(1 for _ in path.open()) if path.exists() else 0


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def _record(paths: StatePaths, pid: int, how: str, number: int) -> None:
    line = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": pid, "how": how, "restart": number}
    with paths.gateway_restarts.open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    print(f"supervisor: gateway (pid {pid}) {how}; restart {number}", file=sys.stderr, flush=True)


def supervise_gateway(ctx: Context) -> int:
    """Serve on servers.host:servers.gateway_port, restarting the serving process until told to stop."""
    from serving.app import serve  # imported here once, so every fork starts warm

    _preimport()

    cfg = ctx.config
    ctx.paths.ensure()
    sock = _listen(cfg.servers.host, cfg.servers.gateway_port)
    state = {"stopping": False, "child": 0}

    def stop(signum: int, frame: FrameType | None) -> None:
        state["stopping"] = True
        if state["child"]:
            os.kill(state["child"], signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backoff, number = 0.0, restart_count(ctx.paths)
    while not state["stopping"]:
        pid = os.fork()
        if pid == 0:
            _serve_child(serve, ctx, sock)
        state["child"] = pid
        print(f"supervisor: serving process pid {pid} started at {time.time():.3f}", file=sys.stderr, flush=True)
        started = time.monotonic()
        _, status = os.waitpid(pid, 0)
        state["child"] = 0
        if state["stopping"]:
            break
        number += 1
        _record(ctx.paths, pid, _how(status), number)
        backoff = min(MAX_BACKOFF_S, max(0.5, backoff * 2)) if time.monotonic() - started < QUICK_EXIT_S else 0.0
        time.sleep(backoff)
    sock.close()
    return 0


def _preimport() -> None:
    """What loading a release imports lazily: skops alone takes ~3 s, which every restart would pay again."""
    import mlflow.artifacts  # noqa: F401
    import skops.io  # noqa: F401
    import yaml  # noqa: F401


def _serve_child(serve: object, ctx: Context, sock: socket.socket) -> None:
    """The forked serving process: default signal handling, uvicorn on the inherited socket; never returns."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    code = 0
    try:
        serve(ctx.config, ctx.paths, sock=sock)  # type: ignore[operator]
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)
