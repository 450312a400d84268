"""Provenance: only files the training pipeline stored, unchanged since, are ever deserialized.

When the pipeline registers a version it records the sha256 of every file of the model and of the release
context in the ledger (the hash-chained `digests` of its entry) and as version tags. Every loader goes through
`tollgate.release`, which checks each file it downloads against `trusted_digests(...)` before reading it; a
version with no such entry, a changed file or a file the pipeline never wrote is refused (`UntrustedRelease`).

The model itself is a skops file loaded with the project's own allow-list (`SKOPS_TRUSTED_TYPES`), never the
list the artifact carries in its MLmodel file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tollgate.ledger import LedgerEntry

DIGEST_TAG_PREFIX = "tollgate.sha256."
REGISTERED_REASON = "registered from training run"
VERDICT_REASON = "gate verdict stored"
# Types beyond skops' defaults (numpy, scipy and scikit-learn estimators) that the project's pipelines contain:
# every model.kind x task in config, with and without scaling (tests/unit/test_provenance.py fits each one).
SKOPS_TRUSTED_TYPES = (
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


# MLflow (re)writes this one at registration and on every download (the registered name and version); nothing
# reads it to load the model, so it is neither recorded nor checked.
UNCHECKED_FILES = frozenset({"registered_model_meta"})


class UntrustedRelease(Exception):
    """A version's files are not what the training pipeline stored; nothing of it was deserialized."""

    def __init__(self, model: str, version: str, file: str, why: str):
        super().__init__(f"refused {model} v{version}: {file}: {why}")
        self.model, self.version, self.file, self.why = model, version, file, why


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def digest_tree(folder: Path, prefix: str) -> dict[str, str]:
    """`prefix/relative/path` -> sha256 for every file under `folder`."""
    return {
        f"{prefix}/{path.relative_to(folder).as_posix()}": sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() not in UNCHECKED_FILES
    }


def digest_tags(digests: dict[str, str], group: str) -> dict[str, str]:
    """One version tag (`tollgate.sha256.<group>`, compact JSON of file -> sha256) that shows the digests in the
    registry UI without a tag per file; the ledger is what loaders trust."""
    return {f"{DIGEST_TAG_PREFIX}{group}": json.dumps(digests, sort_keys=True, separators=(",", ":"))}


def trusted_digests(entries: list[LedgerEntry], model: str, version: str) -> dict[str, str]:
    """Every file digest the pipeline recorded for this version; UntrustedRelease when it never registered it."""
    mine = [e for e in entries if e.model == model and e.version == version and e.digests]
    if not any(e.reason == REGISTERED_REASON for e in mine):
        raise UntrustedRelease(
            model,
            version,
            "(all files)",
            "no registration entry with file digests from the training pipeline in the ledger "
            "(registered outside the pipeline, or before provenance was recorded)",
        )
    out: dict[str, str] = {}
    for entry in mine:
        out.update(entry.digests or {})
    return out


def check_file(trusted: dict[str, str], name: str, path: Path, model: str, version: str) -> None:
    """Raise UntrustedRelease unless `path` is the file the pipeline stored as `name`."""
    expected = trusted.get(name)
    if expected is None:
        raise UntrustedRelease(model, version, name, "not a file the training pipeline stored for this version")
    actual = sha256_file(path)
    if actual != expected:
        raise UntrustedRelease(
            model, version, name, f"sha256 {actual[:16]}... differs from {expected[:16]}... recorded at registration"
        )


def check_tree(trusted: dict[str, str], folder: Path, prefix: str, model: str, version: str) -> None:
    """Every file under `folder` is one the pipeline stored under `prefix`, unchanged, and none is missing."""
    found = digest_tree(folder, prefix)
    for name in found:
        check_file(trusted, name, folder / name.removeprefix(f"{prefix}/"), model, version)
    missing = sorted(name for name in trusted if name.startswith(f"{prefix}/") and name not in found)
    if missing:
        raise UntrustedRelease(model, version, missing[0], "stored at registration but missing now")
