"""Approver secrets: only a listed name with its own secret passes; the store keeps no secret, only a salted hash."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tollgate import approvers

ALLOWED = ["alice", "bob"]


def test_the_printed_secret_passes_and_nothing_else_does(tmp_path: Path) -> None:
    store = tmp_path / "approvers.json"
    alice = approvers.add(store, "alice", ALLOWED)
    bob = approvers.add(store, "bob", ALLOWED)
    assert approvers.check(store, "alice", alice) is None
    assert approvers.check(store, "alice", bob) == "wrong secret for 'alice'"
    assert approvers.check(store, "alice", "") == "no secret given for 'alice'"
    assert approvers.check(store, "alice", None) == "no secret given for 'alice'"
    assert "has no approver secret" in str(approvers.check(store, "carol", alice))


def test_the_store_is_private_and_holds_no_secret(tmp_path: Path) -> None:
    store = tmp_path / "approvers.json"
    secret = approvers.add(store, "alice", ALLOWED)
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert secret not in store.read_text()
    entry = approvers.read(store)["alice"]
    assert set(entry) == {"salt", "hash", "added"} and len(bytes.fromhex(entry["salt"])) == 16


def test_same_secret_gets_a_different_hash_per_salt(tmp_path: Path) -> None:
    store = tmp_path / "approvers.json"
    approvers.add(store, "alice", ALLOWED)
    first = approvers.read(store)["alice"]["hash"]
    approvers.remove(store, "alice")
    approvers.add(store, "alice", ALLOWED)
    assert approvers.read(store)["alice"]["hash"] != first


def test_adding_and_removing_are_refused_with_the_reason(tmp_path: Path) -> None:
    store = tmp_path / "approvers.json"
    with pytest.raises(approvers.ApproverError, match=r"not on rollout\.approvers"):
        approvers.add(store, "mallory", ALLOWED)
    approvers.add(store, "alice", ALLOWED)
    with pytest.raises(approvers.ApproverError, match="already has a secret"):
        approvers.add(store, "alice", ALLOWED)
    with pytest.raises(approvers.ApproverError, match="has no secret"):
        approvers.remove(store, "bob")
    approvers.remove(store, "alice")
    assert approvers.read(store) == {}
    assert not store.exists() or stat.S_IMODE(store.stat().st_mode) == 0o600
