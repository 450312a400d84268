"""Approvers' personal secrets: who may answer an approval, proved rather than claimed.

Prefect OSS has no users, so the approval form's name proves nothing by itself. Each approver on
rollout.approvers gets a random secret (`tollgate approvers add NAME` prints it once); the state folder keeps
only a salted scrypt hash of it (0600 file). The deploy flow checks the secret of every answer before it acts.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
SECRET_ENV = "TOLLGATE_APPROVER_SECRET"


class ApproverError(Exception):
    """An approver cannot be added or removed as asked."""


def _hash(secret: str, salt: bytes) -> str:
    return hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **SCRYPT).hex()


def read(path: Path) -> dict[str, dict[str, Any]]:
    """name -> {salt, hash, added}; {} when nobody was added yet."""
    if not path.exists():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")))


@contextmanager
def _locked(path: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """The store, read and written back under an exclusive lock, replaced atomically with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = read(path)
        yield store
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(store, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def add(path: Path, name: str, allowed: list[str]) -> str:
    """Give `name` (who must be on rollout.approvers) a new secret; returns it (shown once, never stored)."""
    if name not in allowed:
        raise ApproverError(f"{name!r} is not on rollout.approvers ({allowed}): add the name there first")
    with _locked(path) as store:
        if name in store:
            raise ApproverError(
                f"{name!r} already has a secret: `tollgate approvers remove {name}` first to replace it"
            )
        secret = secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        store[name] = {"salt": salt.hex(), "hash": _hash(secret, salt), "added": _now()}
    return secret


def remove(path: Path, name: str) -> None:
    with _locked(path) as store:
        if name not in store:
            raise ApproverError(f"{name!r} has no secret in {path}")
        del store[name]


def check(path: Path, name: str, secret: str | None) -> str | None:
    """None when `secret` is `name`'s; else why not (no secret given, unknown approver, wrong secret)."""
    if not secret:
        return f"no secret given for {name!r}"
    entry = read(path).get(name)
    if entry is None:
        return f"{name!r} has no approver secret (`tollgate approvers add {name}`)"
    if not hmac.compare_digest(_hash(secret, bytes.fromhex(entry["salt"])), entry["hash"]):
        return f"wrong secret for {name!r}"
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
