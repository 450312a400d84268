"""Approvers' keys and proofs (issue 32.4): only a listed name with its own key can answer, and an answer carries
a proof bound to one question (HMAC) or a one-time code used once, never the key: nothing captured can be replayed."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pyotp
import pytest

from tollgate import approvers

ALLOWED = ["alice", "bob"]
Q = approvers.Question("run-1", "approve-v2-0", "2", True)


def test_the_printed_key_passes_and_nothing_else_does(tmp_path: Path) -> None:
    store = tmp_path / "approvers.json"
    alice = approvers.add(store, "alice", ALLOWED)
    bob = approvers.add(store, "bob", ALLOWED)
    assert approvers.check_key(store, "alice", alice) is None
    assert approvers.check_key(store, "alice", bob) == "wrong secret for 'alice'"
    assert approvers.check_key(store, "alice", "") == "no secret given for 'alice'"
    assert approvers.check_key(store, "alice", None) == "no secret given for 'alice'"
    assert "has no approver secret" in str(approvers.check_key(store, "carol", alice))


def test_a_signed_proof_answers_only_the_question_it_was_made_for(tmp_path: Path) -> None:
    store = tmp_path / "approvers.json"
    alice = approvers.add(store, "alice", ALLOWED)
    approvers.add(store, "bob", ALLOWED)
    proof = approvers.sign(alice, "alice", Q)
    assert approvers.check_proof(store, "alice", proof, Q) is None
    assert approvers.check_proof(store, "alice", alice, Q) is not None  # the key itself is no proof
    for other in (
        approvers.Question("run-2", Q.pause_key, Q.version, Q.approve),  # a later rollout
        approvers.Question(Q.flow_run_id, "approve-v2-1", Q.version, Q.approve),  # the next pause of the run
        approvers.Question(Q.flow_run_id, Q.pause_key, "3", Q.approve),
        approvers.Question(Q.flow_run_id, Q.pause_key, Q.version, False),  # an approval replayed as a rejection
    ):
        assert "wrong proof for 'alice'" in str(approvers.check_proof(store, "alice", proof, other))
    assert "wrong proof for 'bob'" in str(approvers.check_proof(store, "bob", proof, Q))  # not bob's signature


def test_a_one_time_code_passes_once(tmp_path: Path) -> None:
    store = tmp_path / "approvers.json"
    alice = approvers.add(store, "alice", ALLOWED)
    now = time.time()
    code = pyotp.TOTP(alice).at(now)
    assert approvers.check_proof(store, "alice", code, Q, now=now) is None
    assert approvers.check_proof(store, "alice", code, Q, now=now) == "one-time code for 'alice' was already used"
    assert "wrong or expired" in str(approvers.check_proof(store, "alice", code, Q, now=now + 120))
    later = pyotp.TOTP(alice).at(now + 30)
    assert approvers.check_proof(store, "alice", later, Q, now=now + 30) is None  # the next step's code
    assert "wrong or expired" in str(
        approvers.check_proof(store, "alice", "000000" if code != "000000" else "111111", Q, now=now + 60)
    )
    assert "expected a 6-digit code" in str(approvers.check_proof(store, "alice", "12345", Q))
    assert approvers.check_proof(store, "alice", "", Q) == "no proof given for 'alice'"


def test_the_store_is_private_and_an_old_entry_must_re_enrol(tmp_path: Path) -> None:
    store = tmp_path / "approvers.json"
    key = approvers.add(store, "alice", ALLOWED)
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert set(approvers.read(store)["alice"]) == {"key", "added", "last_step"}
    assert approvers.provisioning_uri("alice", key).startswith("otpauth://totp/Tollgate:alice?secret=" + key)
    store.write_text(json.dumps({"bob": {"salt": "00", "hash": "00", "added": "then"}}))
    assert "enrolled before one-time proofs" in str(approvers.check_proof(store, "bob", "123456", Q))


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
