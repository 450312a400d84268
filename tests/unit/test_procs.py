"""tollgate.procs: the peak resident memory a benchmark reads of a live worker process."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from tollgate.procs import peak_rss_mb


def test_peak_rss_is_at_least_the_current_rss_and_none_once_the_process_is_gone() -> None:
    peak = peak_rss_mb(os.getpid())
    assert peak is not None and peak >= psutil.Process().memory_info().rss / 1024 / 1024 - 1
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert peak_rss_mb(child.pid) is None
