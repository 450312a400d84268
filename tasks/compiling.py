"""The fitted pipeline compiled to ONNX at registration (tollgate/compiled.py) and checked for parity on the
release's holdout; log_run stores the result with the release (release/compiled.json always, release/model.onnx
when parity held), and every scorer of the version (gateway, shadow, batch) uses it then."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tasks.common import run_logger, tollgate_task
from tollgate.compiled import Compiled, compile_checked
from tollgate.config import FeaturesConfig
from tollgate.objective import Objective


@tollgate_task
def compile_model(
    model: Any, holdout: pd.DataFrame, features: FeaturesConfig, objective: Objective, outputs: np.ndarray
) -> Compiled:
    """ONNX bytes of the pipeline and their parity on the holdout against the run's own holdout `outputs` (never
    fails the run: the sklearn model scores when the compiled one cannot, and the report says why)."""
    compiled = compile_checked(model, holdout, features, objective, outputs)
    report = compiled.report
    if compiled.ok:
        run_logger().info(
            f"compiled to ONNX: parity on {report['rows']} holdout rows, max |diff| {report['max_abs_diff']:.2g}"
        )
    else:
        run_logger().warning(f"scoring stays with the sklearn model: {compiled.reason}")
    return compiled
