"""The bundled dataset is reproducible exactly, realistic in shape, and its scenarios differ as documented."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tasks.data import recorded_md5
from tests.helpers import ROOT, bundled_config
from tollgate.synthetic import SCENARIOS, generate, write_parquet


def test_regenerated_snapshot_reproduces_the_md5_in_data_dvc(tmp_path: Path) -> None:
    gen = bundled_config().generation
    assert gen is not None
    out = tmp_path / "snapshot.parquet"
    write_parquet(generate(gen), str(out))
    assert hashlib.md5(out.read_bytes()).hexdigest() == recorded_md5(ROOT, "data/snapshot.parquet")


def test_snapshot_shape_is_realistic() -> None:
    gen = bundled_config().generation
    assert gen is not None
    df = generate(gen)
    shares = df["region"].value_counts(normalize=True)
    assert shares.max() > 2.5 * shares.min()  # uneven segment sizes
    assert 0.05 < df["churned"].mean() < 0.3
    assert 0.0 < df["last_login_days"].isna().mean() < 0.08  # nulls at realistic rates
    assert df["usage_gb"].skew() > 1  # skewed
    assert df[["monthly_charges", "total_charges"]].corr().iloc[0, 1] > 0.3


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_periods_follow_the_snapshot_with_fresh_ids(scenario: str) -> None:
    gen = bundled_config().generation
    assert gen is not None
    snap, period = generate(gen), generate(gen, scenario, production=True)
    assert period["event_time"].min() > snap["event_time"].max()
    assert not set(period["customer_id"]) & set(snap["customer_id"])


def test_covariate_drift_moves_inputs_and_concept_drift_does_not() -> None:
    gen = bundled_config().generation
    assert gen is not None
    base = generate(gen, "none", production=True)
    cov = generate(gen, "covariate_drift", production=True)
    concept = generate(gen, "concept_drift", production=True)
    assert cov["monthly_charges"].median() > 1.25 * base["monthly_charges"].median()
    assert cov["last_login_days"].median() > 22 > base["last_login_days"].median()  # disengaged, and alike
    assert cov["last_login_days"].std() < 0.5 * base["last_login_days"].std()
    assert abs(concept["monthly_charges"].median() / base["monthly_charges"].median() - 1) < 0.05


def test_dvc_lock_matches_the_committed_code_and_params() -> None:
    """dvc.lock must describe the current tasks/ code and config, else `dvc status` is dirty on a fresh clone."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    params = yaml.safe_load((ROOT / "configs" / "pipeline.yaml").read_text())
    stale = []
    for name, stage in lock["stages"].items():
        for dep in stage["deps"]:
            path = ROOT / dep["path"]
            if dep["path"].endswith(".py") and hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                stale.append(f"{name}: {dep['path']}")
        for key, value in stage.get("params", {}).get("configs/pipeline.yaml", {}).items():
            node = params
            for part in key.split("."):
                node = node[part]
            if node != value:
                stale.append(f"{name}: param {key}")
    assert not stale, f"dvc.lock is stale ({stale}): run `make repro` and commit dvc.lock"
