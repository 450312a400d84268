"""Provenance checks: a version is trusted only through the pipeline's registration entry, a file only when its
sha256 is the recorded one, and a model only as skops holding types on the project's own allow-list."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import yaml

from tasks.training import build_pipeline
from tests.helpers import bundled_config
from tollgate import provenance
from tollgate.config import MODEL_KINDS
from tollgate.ledger import LedgerEntry
from tollgate.provenance import UntrustedRelease
from tollgate.release import load_skops_model


def _entry(version: str, reason: str, digests: dict[str, str] | None) -> LedgerEntry:
    return LedgerEntry("m", version, "-", "None", "ci", reason, digests=digests)


def _folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(body)
    return tmp_path


def test_only_a_pipeline_registration_makes_a_version_trusted() -> None:
    with pytest.raises(UntrustedRelease, match="no registration entry"):
        provenance.trusted_digests([], "m", "1")
    with pytest.raises(UntrustedRelease, match="no registration entry"):  # digests alone, not a registration
        provenance.trusted_digests([_entry("1", provenance.VERDICT_REASON, {"release/a": "x"})], "m", "1")
    entries = [
        _entry("1", provenance.REGISTERED_REASON, {"model/MLmodel": "a"}),
        _entry("2", provenance.REGISTERED_REASON, {"model/MLmodel": "b"}),
        _entry("1", provenance.VERDICT_REASON, {"release/gate_verdict.json": "c"}),
    ]
    assert provenance.trusted_digests(entries, "m", "1") == {"model/MLmodel": "a", "release/gate_verdict.json": "c"}


def test_a_changed_extra_or_missing_file_is_named(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path / "model", {"MLmodel": b"flavors: {}", "model.skops": b"weights", "registered_model_meta": b"x"}
    )
    trusted = provenance.digest_tree(folder, "model")
    assert set(trusted) == {"model/MLmodel", "model/model.skops"}  # MLflow's download-time file is not recorded
    provenance.check_tree(trusted, folder, "model", "m", "1")
    (folder / "model.skops").write_bytes(b"other weights")
    with pytest.raises(UntrustedRelease, match=r"refused m v1: model/model\.skops: sha256 .* differs"):
        provenance.check_tree(trusted, folder, "model", "m", "1")
    (folder / "model.skops").write_bytes(b"weights")
    (folder / "extra.pkl").write_bytes(b"code")
    with pytest.raises(UntrustedRelease, match=r"model/extra\.pkl: not a file the training pipeline stored"):
        provenance.check_tree(trusted, folder, "model", "m", "1")
    (folder / "extra.pkl").unlink()
    (folder / "MLmodel").unlink()
    with pytest.raises(UntrustedRelease, match="model/MLmodel: stored at registration but missing now"):
        provenance.check_tree(trusted, folder, "model", "m", "1")


def _fitted(task: str, kind: str, scale: bool) -> object:
    cfg = bundled_config()
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame({c: rng.normal(size=n) for c in cfg.features.numeric})
    for col in cfg.features.categorical:
        frame[col] = rng.choice(np.array(["a", "b", None], dtype=object), size=n)
    for col in cfg.features.all:
        if col not in frame:
            frame[col] = rng.integers(0, 2, size=n).astype(bool)
    frame.loc[::17, cfg.features.numeric[0]] = np.nan
    y = {"binary": rng.integers(0, 2, n), "multiclass": rng.integers(0, 3, n), "regression": rng.normal(size=n)}[task]
    params = cfg.model.hyperparameters if kind == "hist_gradient_boosting" else {}
    model = cfg.model.model_copy(update={"task": task, "kind": kind, "hyperparameters": params})
    pipeline = build_pipeline(cfg.features.model_copy(update={"scale_numeric": scale}), model)
    return pipeline.fit(frame[cfg.features.all], y)


@pytest.mark.parametrize("task,kind", [(t, k) for t, kinds in MODEL_KINDS.items() for k in kinds])
def test_every_model_kind_fits_the_project_allow_list(task: str, kind: str) -> None:
    for scale in (True, False):
        found = set(sio.get_untrusted_types(data=sio.dumps(_fitted(task, kind, scale))))
        assert found <= set(provenance.SKOPS_TRUSTED_TYPES), (task, kind, found)


def _mlmodel(folder: Path, fmt: str, file: str) -> None:
    body = {"flavors": {"sklearn": {"serialization_format": fmt, "pickled_model": file}}}
    (folder / "MLmodel").write_text(yaml.safe_dump(body))


def test_the_model_loads_by_skops_with_our_list_and_nothing_else(tmp_path: Path) -> None:
    model = _fitted("binary", "hist_gradient_boosting", False)
    sio.dump(model, tmp_path / "model.skops")
    _mlmodel(tmp_path, "skops", "model.skops")
    assert hasattr(load_skops_model(tmp_path, "m", "1"), "predict_proba")

    marker = tmp_path / "ran"
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(Path.touch.__get__(marker)))
    _mlmodel(tmp_path, "cloudpickle", "model.pkl")
    with pytest.raises(UntrustedRelease, match="serialization format 'cloudpickle', not skops"):
        load_skops_model(tmp_path, "m", "1")

    sio.dump({"weights": np.arange(3), "extra": pd.Timestamp("2026-01-01")}, tmp_path / "odd.skops")
    _mlmodel(tmp_path, "skops", "odd.skops")
    with pytest.raises(UntrustedRelease, match="outside the project's allow-list"):
        load_skops_model(tmp_path, "m", "1")
    assert not marker.exists()


def test_the_stack_turns_mlflows_own_model_loaders_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException

    from tollgate.context import client_env
    from tollgate.paths import StatePaths

    env = client_env(bundled_config().servers, StatePaths(tmp_path))
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"])
    model = _fitted("binary", "logistic_regression", True)
    trusted = list(provenance.SKOPS_TRUSTED_TYPES)
    mlflow.sklearn.save_model(model, tmp_path / "m", serialization_format="skops", skops_trusted_types=trusted)
    with pytest.raises(MlflowException, match="MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
        mlflow.sklearn.load_model(str(tmp_path / "m"))
    assert hasattr(load_skops_model(tmp_path / "m", "m", "1"), "predict")  # ours still loads it, by our list
