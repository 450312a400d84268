"""The promotion ledger: one JSON line per stage transition or decision, appended and never rewritten.

Tamper-evident: each entry carries the sha256 of the entry before it (`prev`) and its own (`hash`, over every
other field), and the newest hash is also kept beside the ledger (`<ledger>.head`). `verify` walks the chain and
names the first entry that was edited (its hash no longer matches), removed or reordered (its `prev` is not the
hash of the line before it), or the cut when entries were removed from the end (the head file disagrees).
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LedgerEntry:
    """Who moved which model version from which stage to which, when, why, and the evidence run."""

    model: str
    version: str
    from_stage: str
    to_stage: str
    who: str
    reason: str
    evidence_run_id: str | None = None
    flow_run_id: str | None = None
    at: str = ""
    # sha256 of every file of the version the pipeline stored ("model/MLmodel", "release/config.json", ...):
    # what loaders check before they deserialize anything (tollgate/provenance.py). Only on pipeline entries.
    digests: dict[str, str] | None = None
    prev: str = ""
    hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        if body["digests"] is None:  # entries without file digests keep the shape (and hash) they had
            del body["digests"]
        return body

    def digest(self) -> str:
        """sha256 of the canonical JSON of every field but `hash` (so `prev` and `digests` are covered)."""
        body = {k: v for k, v in self.to_dict().items() if k != "hash"}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


GENESIS = "0" * 64


def head_path(path: Path) -> Path:
    """Where the newest entry's hash is kept (catches entries cut from the end)."""
    return path.with_name(path.name + ".head")


def _last_hash(fh: Any) -> str:
    fh.seek(0)
    last = GENESIS
    for line in fh:
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict) and parsed.get("hash"):
            last = str(parsed["hash"])
    return last


def current_actor() -> str:
    """Who is acting: $TOLLGATE_ACTOR, else the OS user."""
    return os.environ.get("TOLLGATE_ACTOR") or getpass.getuser()


def append(path: Path, entry: LedgerEntry) -> LedgerEntry:
    """Append one entry durably (exclusive lock, fsync), chained to the one before; returns it as written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            at = entry.at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            chained = LedgerEntry(**{**entry.to_dict(), "at": at, "prev": _last_hash(fh), "hash": ""})
            stamped = LedgerEntry(**{**chained.to_dict(), "hash": chained.digest()})
            end = fh.seek(0, os.SEEK_END)
            if end and not _ends_with_newline(path, end):
                fh.write("\n")  # a torn line from a crash stays visible to verify, never glued to this entry
            fh.write(json.dumps(stamped.to_dict(), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            _write_head(path, stamped.hash)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return stamped


def _ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as raw:
        raw.seek(size - 1)
        return raw.read(1) == b"\n"


def _write_head(path: Path, digest: str) -> None:
    tmp = path.with_name(path.name + ".head.tmp")
    tmp.write_text(digest + "\n", encoding="utf-8")
    os.replace(tmp, head_path(path))


def verify(path: Path) -> list[str]:
    """Problems with the chain, first one first (empty when intact). Line numbers count from 1."""
    if not path.exists():
        return []
    previous = GENESIS
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            entry = LedgerEntry(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            return [f"{path}: entry {number} is not a ledger entry (edited or torn): {line[:80]!r}"]
        what = f"entry {number} (v{entry.version} {entry.from_stage} -> {entry.to_stage} at {entry.at})"
        if not entry.hash:
            return [f"{path}: {what} has no hash: written before the ledger was chained, or edited"]
        if entry.digest() != entry.hash:
            return [f"{path}: {what} was edited: its content no longer matches its hash"]
        if entry.prev != previous:
            return [f"{path}: {what} does not follow the entry before it: an entry was removed or reordered here"]
        previous = entry.hash
    head = head_path(path)
    recorded = head.read_text(encoding="utf-8").strip() if head.exists() else previous
    if recorded != previous:
        return [f"{path}: the last entry is not the newest one written ({head}): entries were removed from the end"]
    return []


def read(path: Path, model: str | None = None) -> list[LedgerEntry]:
    """Every entry in order (optionally for one model); a torn last line from a crash is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = LedgerEntry(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        if model is None or entry.model == model:
            out.append(entry)
    return out
