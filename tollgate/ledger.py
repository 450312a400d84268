"""The promotion ledger: one JSON line per stage transition or decision, appended and never rewritten."""

from __future__ import annotations

import fcntl
import getpass
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def current_actor() -> str:
    """Who is acting: $TOLLGATE_ACTOR, else the OS user."""
    return os.environ.get("TOLLGATE_ACTOR") or getpass.getuser()


def append(path: Path, entry: LedgerEntry) -> LedgerEntry:
    """Append one entry durably (exclusive lock, fsync); returns it with its timestamp."""
    stamped = LedgerEntry(**{**entry.to_dict(), "at": entry.at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(json.dumps(stamped.to_dict(), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return stamped


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
