"""The training run's MLflow dataset input: the schema MLflow would infer, without its per-cell passes."""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.types.utils import _infer_schema

from tasks.data import DataVersion
from tasks.tracking import SCHEMA_SAMPLE_ROWS, training_dataset


def test_dataset_schema_equals_mlflows_full_inference_with_nulls_past_the_sample(tmp_path) -> None:
    n = SCHEMA_SAMPLE_ROWS + 500
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(n)],
            "when": pd.date_range("2024-01-01", periods=n, freq="min"),
            "plan": rng.choice(["basic", "pro"], n).astype(object),
            "count": rng.integers(0, 9, n),
            "amount": rng.normal(size=n),
            "flag": rng.random(n) < 0.5,
        }
    )
    frame.loc[n - 3, "amount"] = np.nan  # nulls only after the rows the types are read from
    frame.loc[n - 2, "plan"] = None
    version = DataVersion(str(tmp_path / "t.parquet"), "0123456789abcdef", None, "sha", False, n)
    dataset = training_dataset(frame, version, "flag")
    assert dataset.schema == _infer_schema(frame)
    assert {c.name: c.required for c in dataset.schema.inputs}["amount"] is False
    assert dataset.digest == "01234567"
    assert dataset.name == "t.parquet@01234567"
