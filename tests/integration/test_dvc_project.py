"""Real DVC on a copy of the project: the bundled data reproduces exactly, and a user's own table works
with a config change only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tasks.data import recorded_md5
from tests.fixtures.byod.make_loans import make_loans
from tests.helpers import copy_project

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def _env(project: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "TOLLGATE_HOME": str(project / ".tollgate")}


def _run(project: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=project, env=_env(project), capture_output=True, text=True, timeout=600)


def _tollgate(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(project, str(BIN / "python"), "-m", "tollgate.app.cli", *args)


def test_fresh_tree_regenerates_the_recorded_data_and_repro_matches_dvc_lock(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "proj")
    gen = _tollgate(project, "data", "generate")
    assert gen.returncode == 0, gen.stdout + gen.stderr
    assert "matches the version data.dvc records" in gen.stdout
    assert (project / ".tollgate" / "dvc-remote" / "files" / "md5").is_dir()  # pushed to the local remote
    repro = _run(project, str(BIN / "dvc"), "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    status = _run(project, str(BIN / "dvc"), "status")
    assert "up to date" in status.stdout, status.stdout
    # dvc.lock and data.dvc are unchanged: the committed lineage is what a fresh tree rebuilds.
    assert _git(project, "status", "--porcelain") == ""
    again = _run(project, str(BIN / "dvc"), "repro")
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    # A clone can also pull the exact bytes back from the remote.
    (project / "data" / "snapshot.parquet").unlink()
    pull = _run(project, str(BIN / "dvc"), "pull", "data.dvc")
    assert pull.returncode == 0, pull.stderr
    assert _run(project, str(BIN / "dvc"), "status", "data.dvc").stdout.strip().endswith("up to date.")


def test_bring_your_own_data_needs_only_config(tmp_path: Path) -> None:
    """Slow (~45 s): README's bring-your-own-data steps as processes in a fresh project copy (config check,
    validate, dvc track, dvc repro), since what is tested is that those commands work together on a clean tree."""
    project = copy_project(tmp_path / "proj")
    # The README's steps: put the table in place, describe it in configs/pipeline.yaml, check, validate, track, repro.
    shutil.copy(ROOT / "tests" / "fixtures" / "byod" / "pipeline.yaml", project / "configs" / "pipeline.yaml")
    (project / "data.dvc").unlink()
    (project / "dvc.lock").unlink()
    make_loans().to_parquet(project / "data" / "loans.parquet", index=False)
    assert _tollgate(project, "config", "check").returncode == 0
    validated = _tollgate(project, "validate", "data/loans.parquet")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    tracked = _tollgate(project, "data", "track")
    assert tracked.returncode == 0, tracked.stdout + tracked.stderr
    assert recorded_md5(project, "data/loans.parquet") is not None
    repro = _run(project, str(BIN / "dvc"), "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    metrics = json.loads((project / "data" / "build" / "metrics.json").read_text())
    assert metrics["overall"]["auc"] > 0.6
    assert set(metrics["segments"]) == {"branch", "product", "channel"}
    assert "up to date" in _run(project, str(BIN / "dvc"), "status").stdout
    # A bad row in the user's table fails the same gate, naming the column.
    bad = make_loans()
    bad.loc[0, "dti"] = 9.0
    bad.to_parquet(project / "data" / "bad.parquet", index=False)
    failed = _tollgate(project, "validate", "data/bad.parquet")
    assert failed.returncode == 1 and "column 'dti'" in failed.stdout
    # The lock records the user's params, not the bundled ones.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["configs/pipeline.yaml"]["model"]["kind"] == "logistic_regression"
