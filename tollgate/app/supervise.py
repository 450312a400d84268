"""The gateway under supervision (`tollgate serve --supervise`, what `tollgate up` runs).

The supervisor imports the gateway code once, binds the listening socket once, then forks the serving process
from itself and forks a new one whenever it dies (a crash, an OOM kill, `kill -9`). Because the socket stays
open in the supervisor, connections that arrive during a restart wait in the kernel's backlog instead of being
refused, and a warm fork (nothing to import) serves again in about a second, on what the registry says is
Production, loaded through the same provenance checks as always. Each restart is a line in
`$TOLLGATE_HOME/gateway-restarts.jsonl` (`StatePaths.gateway_restarts`) (counted on `/metrics` and by `tollgate status`) and in the gateway log.
SIGTERM/SIGINT to the supervisor stop the serving process gracefully and then the supervisor.

With `serving.replicas: N` (N > 1) the supervisor forks N serving processes that all accept on the one listening
socket, and binds each its own port as well (serving/replicas.py); each is restarted on its own when it dies, while
the others go on serving.
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
from dataclasses import dataclass
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


def _record(paths: StatePaths, pid: int, how: str, number: int, replica: int | None) -> None:
    line = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": pid, "how": how, "restart": number}
    which = "gateway"
    if replica is not None:
        line["replica"] = replica
        which = f"gateway replica {replica}"
    with paths.gateway_restarts.open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    print(f"supervisor: {which} (pid {pid}) {how}; restart {number}", file=sys.stderr, flush=True)


@dataclass
class _Slot:
    """One serving process the supervisor keeps alive: its replica index, own socket, pid, and restart pacing."""

    index: int
    own: socket.socket | None
    pid: int = 0
    started: float = 0.0
    due: float = 0.0  # monotonic time its next start may happen (backoff after a quick death)
    backoff: float = 0.0


def supervise_gateway(ctx: Context) -> int:
    """Serve on servers.host:servers.gateway_port with serving.replicas processes, restarting each one that dies
    until told to stop."""
    from serving.app import serve  # imported here once, so every fork starts warm
    from serving.replicas import Replicas
    from tollgate.secrets import admin_token

    _preimport()

    cfg = ctx.config
    ctx.paths.ensure()
    sock = _listen(cfg.servers.host, cfg.servers.gateway_port)
    count = cfg.serving.replicas
    slots = [_Slot(0, None)]
    ports: tuple[int, ...] = ()
    if count > 1:
        base = cfg.serving.replica_base_port
        slots = [_Slot(i, _listen(cfg.servers.host, base + i if base else 0)) for i in range(count)]
        ports = tuple(slot.own.getsockname()[1] for slot in slots if slot.own is not None)
        print(f"supervisor: {count} replicas, own ports {', '.join(map(str, ports))}", file=sys.stderr, flush=True)
    token = admin_token(cfg, ctx.paths)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for slot in slots:
            if slot.pid:
                os.kill(slot.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    number = restart_count(ctx.paths)
    while not stopping:
        now = time.monotonic()
        for slot in slots:
            if not slot.pid and now >= slot.due and not stopping:
                replicas = None
                if slot.own is not None:
                    replicas = Replicas(slot.index, cfg.servers.host, ports, token, cfg.serving.reload_timeout_s)
                pid = os.fork()
                if pid == 0:
                    _serve_child(serve, ctx, sock, replicas, slot.own)
                slot.pid, slot.started = pid, time.monotonic()
                print(
                    f"supervisor: serving process pid {pid} started at {time.time():.3f}", file=sys.stderr, flush=True
                )
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(0.02)
            continue
        dead = next((s for s in slots if s.pid == pid), None)
        if dead is None:
            continue
        dead.pid = 0
        if stopping:
            break
        number += 1
        _record(ctx.paths, pid, _how(status), number, dead.index if count > 1 else None)
        quick = time.monotonic() - dead.started < QUICK_EXIT_S
        dead.backoff = min(MAX_BACKOFF_S, max(0.5, dead.backoff * 2)) if quick else 0.0
        dead.due = time.monotonic() + dead.backoff
    for slot in slots:  # the rest finish their in-flight requests (SIGTERM was sent to each)
        if slot.pid:
            os.waitpid(slot.pid, 0)
    sock.close()
    for slot in slots:
        if slot.own is not None:
            slot.own.close()
    return 0


def _preimport() -> None:
    """What loading a release imports lazily: skops alone takes ~3 s, which every restart would pay again."""
    import mlflow.artifacts  # noqa: F401
    import skops.io  # noqa: F401
    import yaml  # noqa: F401


def _serve_child(
    serve: object, ctx: Context, sock: socket.socket, replicas: object = None, own: socket.socket | None = None
) -> None:
    """The forked serving process: default signal handling, uvicorn on the inherited socket (and the replica's
    own); never returns."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    code = 0
    try:
        serve(ctx.config, ctx.paths, sock=sock, replicas=replicas, own=own)  # type: ignore[operator]
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)
