"""Process and port helpers shared by the stack, the gateway and the prediction log (psutil: Linux and macOS)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import psutil


def pid_alive(pid: int) -> bool:
    """True when process `pid` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.AccessDenied:
        return True


def cmdline(pid: int) -> str:
    """The command line of `pid` joined by spaces, or '' when it cannot be read."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.Error, ValueError):
        return ""


def group_pids(pgid: int) -> list[int]:
    """Every live (non-zombie) process in process group `pgid`: a service and its children."""
    out = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and _pgid(proc.pid) == pgid:
                out.append(proc.pid)
        except psutil.Error:
            continue
    return out


def _pgid(pid: int) -> int:
    import os

    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return -1


def group_rss_mb(pgid: int) -> float:
    """Resident memory of a whole process group, in MiB."""
    total = 0
    for pid in group_pids(pgid):
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when GET url answers 2xx within `timeout` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False
