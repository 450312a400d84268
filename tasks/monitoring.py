"""Transitional: the monitoring stage now lives in rooms of one job each, and this module only keeps the old names
for callers outside it until they switch:

- tasks.profiling: the reference profile at training (`profile_reference(frame, holdout, scores, ctx)`)
- tollgate.stats: PSI, binned KS, Jensen-Shannon and the one binning helper
- tasks.drift: the streaming accumulator, DriftReport / DriftCheck, load_production_release, compute_drift
- tasks.reporting: Evidently and the MLflow / Prefect records
- tasks.actions: signals, events and the automatic rollback; tasks.alerts: delivery after the action

Callers still here: flows/training.py (profile_reference with a config), tasks/deployment.py
(psi_from_proportions), bench/bench_drift.py (DriftAccumulator, reference_profile, evidently_*).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tasks.common import tollgate_task
from tasks.drift import DriftAccumulator
from tasks.profiling import reference_profile
from tasks.reporting import evidently_drift, evidently_verdicts
from tollgate.config import TollgateConfig
from tollgate.stats import psi_from_proportions

__all__ = [
    "DriftAccumulator",
    "evidently_drift",
    "evidently_verdicts",
    "profile_reference",
    "psi_from_proportions",
    "reference_profile",
]


@tollgate_task
def profile_reference(
    frame: pd.DataFrame, holdout: pd.DataFrame, scores: np.ndarray, cfg: TollgateConfig
) -> dict[str, Any]:
    """The drift reference profile (old signature, taking the config; tasks.profiling's takes the context)."""
    bins, segments, min_rows = cfg.monitoring.reference_bins, cfg.dataset.segments, cfg.gates.min_segment_size
    return reference_profile(frame, cfg.features, scores, bins, holdout, segments, min_rows)
