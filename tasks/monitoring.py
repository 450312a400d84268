"""Transitional: the monitoring stage lives in rooms of one job each (tasks.profiling, tasks.drift,
tasks.reporting, tasks.actions, tasks.alerts; the statistics in tollgate.stats). This module only keeps the
names bench/bench_drift.py imports until it switches to tasks.drift / tasks.profiling / tasks.reporting."""

from __future__ import annotations

from tasks.drift import DriftAccumulator
from tasks.profiling import reference_profile
from tasks.reporting import evidently_drift, evidently_verdicts

__all__ = ["DriftAccumulator", "evidently_drift", "evidently_verdicts", "reference_profile"]
