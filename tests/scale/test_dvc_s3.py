"""The data version's DVC remote on S3 (issue 14.2): a project whose default remote is an S3 bucket (moto's
S3-compatible server here, configured exactly as README's commands do) pushes the snapshot `tollgate data track`
records, and a fresh clone of the project gets the same bytes back with `dvc pull`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tasks.data import file_md5, recorded_md5
from tests.helpers import ROOT, copy_project
from tests.scale.engines import S3_ENV, s3, s3_keys

BIN = Path(sys.executable).parent


def _run(cwd: Path, *cmd: str, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    )
    return proc.stdout


def test_a_snapshot_pushed_to_an_s3_remote_comes_back_in_a_fresh_clone(tmp_path: Path) -> None:
    env = {**os.environ, **S3_ENV, "PATH": f"{BIN}:{os.environ['PATH']}"}
    project = copy_project(tmp_path / "project")
    data = "data/snapshot.parquet"  # DVC-tracked, so not in git: copied as a user's working tree has it
    shutil.copy2(ROOT / data, project / data)
    with s3("tollgate-dvc") as store:
        # README's commands: the bucket as the default remote, the endpoint for an S3-compatible store
        _run(project, "dvc", "remote", "add", "--default", "--force", "s3", f"s3://{store.bucket}/dvc", env=env)
        _run(project, "dvc", "remote", "modify", "s3", "endpointurl", store.endpoint, env=env)
        said = _run(project, "tollgate", "--config", "configs/pipeline.yaml", "data", "track", env=env)
        md5 = recorded_md5(project, data)
        assert md5 is not None and md5 == file_md5(project / data) and md5 in said
        keys = s3_keys(store)
        assert any(k.startswith("dvc/") and k.replace("/", "").endswith(md5[2:]) for k in keys), keys
        # a fresh clone: the pointer and the remote's config come with git, the bytes from the bucket
        _run(project, "git", "add", "-A", env=env)
        _run(project, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "s3 remote", env=env)
        clone = tmp_path / "clone"
        _run(tmp_path, "git", "clone", "-q", str(project), str(clone), env=env)
        assert not (clone / data).exists()
        _run(clone, "dvc", "pull", "data.dvc", env=env)
        assert file_md5(clone / data) == md5
