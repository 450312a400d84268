"""Data stage: DVC tracking of the training snapshot and the pinned data version (DVC md5 + git sha)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.common import tollgate_task

DVC = str(Path(sys.executable).parent / "dvc")
POINTER = "data.dvc"


class DataVersionError(Exception):
    """The data on disk does not match what DVC recorded, or DVC failed; the message says which file."""


@dataclass(frozen=True)
class DataVersion:
    """What a model was trained on: the DVC md5 of the snapshot and the git commit of code + config."""

    path: str
    md5: str
    recorded_md5: str | None
    git_sha: str | None
    git_dirty: bool
    rows: int | None = None

    @property
    def matches_dvc(self) -> bool:
        """True when the file on disk is exactly the version data.dvc records."""
        return self.recorded_md5 == self.md5

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "matches_dvc": self.matches_dvc}


def file_md5(path: Path) -> str:
    """md5 of a file's bytes (what DVC records for a single-file output)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def run_dvc(root: Path, *args: str) -> str:
    """Run a dvc command in `root`; raise DataVersionError with its output on failure."""
    proc = subprocess.run([DVC, *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataVersionError(f"`dvc {' '.join(args)}` failed in {root}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def recorded_md5(root: Path, data_path: str) -> str | None:
    """The md5 data.dvc records for data_path, or None when data.dvc is absent or tracks another path."""
    pointer = root / POINTER
    if not pointer.exists():
        return None
    body = yaml.safe_load(pointer.read_text()) or {}
    for out in body.get("outs", []):
        if Path(out.get("path", "")) == Path(data_path):
            return str(out.get("md5"))
    return None


def _git(root: Path, *args: str) -> str | None:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(root: Path) -> tuple[str | None, bool]:
    """(HEAD sha or None outside git, True when tracked files have uncommitted changes)."""
    sha = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return sha, bool(status)


def track_snapshot(root: Path, data_path: str) -> str:
    """`dvc add` the snapshot, keep the pointer as data.dvc at the top, push to the default remote; returns md5."""
    default_pointer = root / f"{data_path}.dvc"
    pointer = root / POINTER
    if pointer.exists() and not default_pointer.exists():
        # DVC only updates a pointer it can find next to the data; put it there for the add, then back.
        body = yaml.safe_load(pointer.read_text())
        for out in body.get("outs", []):
            out["path"] = Path(out["path"]).name
        default_pointer.write_text(yaml.safe_dump(body, sort_keys=False))
        pointer.unlink()
    run_dvc(root, "add", "--quiet", data_path)
    body = yaml.safe_load(default_pointer.read_text())
    for out in body.get("outs", []):
        out["path"] = data_path
    pointer.write_text(yaml.safe_dump(body, sort_keys=False))
    default_pointer.unlink()
    run_dvc(root, "push", "--quiet", POINTER)
    md5 = recorded_md5(root, data_path)
    if md5 is None:
        raise DataVersionError(f"{pointer}: does not record {data_path} after `dvc add`")
    return md5


def pin_version(root: Path, data_path: Path, rows: int | None = None) -> DataVersion:
    """The data version of `data_path`: its md5, what data.dvc records, and the git sha / dirty flag."""
    rel = (
        data_path.resolve().relative_to(root.resolve())
        if data_path.resolve().is_relative_to(root.resolve())
        else data_path
    )
    sha, dirty = git_state(root)
    return DataVersion(
        path=str(rel),
        md5=file_md5(data_path),
        recorded_md5=recorded_md5(root, str(rel)),
        git_sha=sha,
        git_dirty=dirty,
        rows=rows,
    )


@tollgate_task
def pin_data_version(root: str, data_path: str, rows: int, allow_dirty: bool) -> DataVersion:
    """Pin the data version; raise DataVersionError on a dirty git tree unless allow_dirty."""
    version = pin_version(Path(root), Path(data_path), rows)
    if version.git_dirty and not allow_dirty:
        raise DataVersionError(
            f"the git tree at {root} has uncommitted changes to tracked files, so git sha {version.git_sha} "
            "does not describe the code and config being trained. Commit them, or pass --allow-dirty "
            "(the version is then tagged git_dirty=true)."
        )
    return version
