"""Approvers' personal keys: who may answer an approval, proved rather than claimed, and never replayable.

Prefect OSS has no users, so the approval form's name proves nothing by itself. Each approver on
rollout.approvers gets a random key (`tollgate approvers add NAME` prints it once, with an otpauth:// URI for an
authenticator app). An answer never carries the key; it carries a proof bound to what it answers:
- `tollgate approve` sends HMAC-SHA256(key, flow run id | pause key | version | decision | approver): valid for
  that one pause of that one run, so a captured answer approves nothing else;
- the Prefect UI form takes a 6-digit time-based one-time code (RFC 6238, pyotp) from the authenticator: valid
  for its 30 s step (one step of clock skew either side) and accepted once per approver (the last used step is
  kept), so a captured code is dead once used.
The key is kept in the state folder's 0600 store (the flow must check proofs); nothing reusable reaches Prefect.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECRET_ENV = "TOLLGATE_APPROVER_SECRET"
ISSUER = "Tollgate"


class ApproverError(Exception):
    """An approver cannot be added or removed as asked."""


@dataclass(frozen=True)
class Question:
    """What one answer answers: the paused flow run, the pause (a new key per attempt), the version and the
    decision. An HMAC proof is bound to all of it."""

    flow_run_id: str
    pause_key: str
    version: str
    approve: bool

    def message(self, approver: str) -> bytes:
        decision = "approve" if self.approve else "reject"
        return f"{self.flow_run_id}|{self.pause_key}|{self.version}|{decision}|{approver}".encode()


def sign(key: str, approver: str, question: Question) -> str:
    """The proof `tollgate approve` sends for `question`: HMAC-SHA256 under the approver's key (hex)."""
    return hmac.new(key.encode(), question.message(approver), hashlib.sha256).hexdigest()


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
    """Give `name` (who must be on rollout.approvers) a new key; returns it (shown once)."""
    import pyotp

    if name not in allowed:
        raise ApproverError(f"{name!r} is not on rollout.approvers ({allowed}): add the name there first")
    with _locked(path) as store:
        if name in store:
            raise ApproverError(
                f"{name!r} already has a secret: `tollgate approvers remove {name}` first to replace it"
            )
        key = pyotp.random_base32(32)
        store[name] = {"key": key, "added": _now(), "last_step": 0}
    return key


def provisioning_uri(name: str, key: str) -> str:
    """The otpauth:// URI an authenticator app enrols (its codes answer the Prefect UI form)."""
    import pyotp

    return pyotp.TOTP(key).provisioning_uri(name=name, issuer_name=ISSUER)


def remove(path: Path, name: str) -> None:
    with _locked(path) as store:
        if name not in store:
            raise ApproverError(f"{name!r} has no secret in {path}")
        del store[name]


def _entry(store: dict[str, dict[str, Any]], name: str) -> tuple[dict[str, Any] | None, str | None]:
    entry = store.get(name)
    if entry is None:
        return None, f"{name!r} has no approver secret (`tollgate approvers add {name}`)"
    if "key" not in entry:
        return None, (
            f"{name!r} was enrolled before one-time proofs: `tollgate approvers remove {name}` then "
            f"`tollgate approvers add {name}`"
        )
    return entry, None


def check_key(path: Path, name: str, key: str | None) -> str | None:
    """None when `key` is `name`'s (what `tollgate approve` checks before it signs); else why not."""
    if not key:
        return f"no secret given for {name!r}"
    entry, why = _entry(read(path), name)
    if entry is None:
        return why
    if not hmac.compare_digest(key.encode(), str(entry["key"]).encode()):
        return f"wrong secret for {name!r}"
    return None


def check_proof(path: Path, name: str, proof: str | None, question: Question, now: float | None = None) -> str | None:
    """None when `proof` proves `name` answers `question`: their HMAC over it, or a one-time code of theirs not
    used before (then marked used); else why not."""
    import pyotp

    proof = (proof or "").strip()
    if not proof:
        return f"no proof given for {name!r}"
    with _locked(path) as store:
        entry, why = _entry(store, name)
        if entry is None:
            return why
        key = str(entry["key"])
        if len(proof) == 64:
            if hmac.compare_digest(proof, sign(key, name, question)):
                return None
            return f"wrong proof for {name!r} (not signed with their key for this run, pause and decision)"
        if not (proof.isdigit() and len(proof) == 6):
            return f"wrong proof for {name!r}: expected a 6-digit code or the signature `tollgate approve` sends"
        totp = pyotp.TOTP(key)
        step_now = totp.timecode(_utc(now))
        for step in (step_now - 1, step_now, step_now + 1):
            if hmac.compare_digest(totp.generate_otp(step), proof):
                if step <= int(entry.get("last_step", 0)):
                    return f"one-time code for {name!r} was already used"
                entry["last_step"] = step
                return None
        return f"wrong or expired one-time code for {name!r}"


def _utc(now: float | None) -> Any:
    import datetime

    return datetime.datetime.fromtimestamp(time.time() if now is None else now, tz=datetime.UTC)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
