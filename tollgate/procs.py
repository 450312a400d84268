"""Process and port helpers shared by the stack, the gateway and the prediction log (psutil: Linux and macOS)."""

from __future__ import annotations

import base64
import os
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


def this_process() -> dict[str, object]:
    """Who this process is, in a form `same_process` can check later: pid, start time (wall clock, for people),
    start ticks since boot (Linux: what identifies it), host."""
    me = psutil.Process()
    return {"pid": me.pid, "started": me.create_time(), "ticks": _start_ticks(me.pid), "host": socket.gethostname()}


def same_process(identity: dict[str, object]) -> bool | None:
    """Whether the process `this_process()` described still runs (None: it ran on another host, cannot tell).

    On Linux the process is known by its start in clock ticks since boot (/proc/PID/stat), which no clock change
    moves: a wall-clock start time is boot time + ticks, and the kernel recomputes boot time from the current
    clock on every read, so two processes can see the same process start a second apart (NTP slew), which once
    made a live rollout's controller look gone. Elsewhere, wall-clock start times within 2 s are the same."""
    if identity.get("host") != socket.gethostname():
        return None
    try:
        pid = int(str(identity["pid"]))
        if identity.get("ticks") is not None and _start_ticks(os.getpid()) is not None:
            return _start_ticks(pid) == int(str(identity["ticks"]))
        return abs(psutil.Process(pid).create_time() - float(str(identity["started"]))) < 2.0
    except (psutil.NoSuchProcess, KeyError, ValueError):
        return False


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (starttime: clock ticks from boot to the process's start), None without /proc
    or without the process. The command name (field 2) may hold spaces and parentheses: count after the last ')'."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


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


def peak_rss_mb(pid: int) -> float | None:
    """The kernel's high-water mark of a live process's resident memory (VmHWM in /proc/PID/status), in MB; None
    when the process is gone or there is no /proc."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


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


def http_status(url: str, login: tuple[str, str] | None = None, timeout: float = 5.0) -> int | None:
    """The status of GET url (with HTTP basic auth when `login` is given), or None when nothing answers."""
    request = urllib.request.Request(url)
    if login is not None:
        token = base64.b64encode(":".join(login).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when GET url answers 2xx within `timeout` seconds (the servers' /health needs no login)."""
    status = http_status(url, timeout=timeout)
    return status is not None and 200 <= status < 300


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity, where the OS has one), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
