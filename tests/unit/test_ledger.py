"""The promotion ledger is a hash chain: any edit, removal or reordering is found and named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tollgate import ledger


def _write(path: Path, n: int) -> list[ledger.LedgerEntry]:
    return [
        ledger.append(path, ledger.LedgerEntry("m", str(i), "None", "Staging", "ci", f"step {i}", None))
        for i in range(1, n + 1)
    ]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_chain_links_each_entry_to_the_one_before(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    entries = _write(path, 3)
    assert entries[0].prev == ledger.GENESIS
    assert [e.prev for e in entries[1:]] == [e.hash for e in entries[:-1]]
    assert ledger.verify(path) == []
    assert [e.hash for e in ledger.read(path)] == [e.hash for e in entries]


@pytest.mark.parametrize(
    ("tamper", "expect"),
    [
        ("edit", "entry 2 (v2 None -> Staging at"),
        ("remove", "entry 2 (v3 None -> Staging"),
        ("reorder", "entry 2 (v3 None -> Staging"),
        ("truncate", "removed from the end"),
    ],
)
def test_verify_names_the_first_tampered_entry(tmp_path: Path, tamper: str, expect: str) -> None:
    path = tmp_path / "ledger.jsonl"
    _write(path, 4)
    lines = _lines(path)
    if tamper == "edit":
        entry = json.loads(lines[1])
        entry["who"] = "mallory"
        lines[1] = json.dumps(entry, sort_keys=True)
    elif tamper == "remove":
        del lines[1]
    elif tamper == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines = lines[:-1]
    path.write_text("\n".join(lines) + "\n")
    problems = ledger.verify(path)
    assert len(problems) == 1 and expect in problems[0], problems
    if tamper == "edit":
        assert "edited" in problems[0]


def test_edit_that_recomputes_its_own_hash_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _write(path, 3)
    lines = _lines(path)
    forged = ledger.LedgerEntry(**{**json.loads(lines[0]), "who": "mallory", "hash": ""})
    lines[0] = json.dumps({**forged.to_dict(), "hash": forged.digest()}, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    problems = ledger.verify(path)
    assert problems and "entry 2 (v2" in problems[0] and "removed or reordered" in problems[0]


def test_a_torn_line_is_reported_and_never_glued_to_the_next_entry(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _write(path, 2)
    with open(path, "a") as fh:
        fh.write('{"model": "m", "vers')  # a crash mid-write
    ledger.append(path, ledger.LedgerEntry("m", "9", "Staging", "Production", "ci", "after the crash", None))
    assert [e.version for e in ledger.read(path)] == ["1", "2", "9"]
    problems = ledger.verify(path)
    assert problems and "entry 3 is not a ledger entry" in problems[0]
