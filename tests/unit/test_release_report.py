"""The release report's HTML without servers: everything from the run or the ledger is escaped, pictures are
inline, nothing points outside the file, unreadable parts are named; and drawing never fails its caller."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from tasks.pictures import drawn_safely
from tasks.plots import roc
from tasks.release_report import ReportParts, render
from tollgate.ledger import LedgerEntry

HOSTILE = '<script>alert(1)</script><img src="https://evil.example/x.png">'


def _parts() -> ReportParts:
    y = np.array([0, 1] * 50)
    curve = roc(y, np.linspace(0, 1, 100))
    parts = ReportParts("churn", "7", "Staging", "abc123", {"tollgate.scoring": "onnx"})
    parts.files = {
        "model_card.md": f"# churn v7\n{HOSTILE}",
        "data_version.json": {"md5": "f00", "rows": 100, "path": HOSTILE},
        "expectation_suite.json": {"name": "tollgate-dataset", "expectations": [{}, {}]},
        "gate_verdict.json": {
            "passed": False,
            "baseline": "Production v6",
            "checks": [{"scope": HOSTILE, "check": "auc_segment_harm", "status": "fail", "n": 300, "diff": -0.05}],
        },
    }
    parts.pictures = {"training": [(curve.title, curve.png)], "shadow": [], "canary": []}
    parts.approvals = [{"at": "2026-12-07T10:00:00Z", "approve": False, "approver": "alice", "comment": HOSTILE}]
    parts.entries = [LedgerEntry("churn", "7", "None", "Staging", "tollgate", f"gate passed {HOSTILE}", hash="ab" * 32)]
    parts.problems = ["gate_verdict.json: UntrustedRelease: digest mismatch"]
    return parts


def test_every_string_from_the_run_or_ledger_is_text_never_markup() -> None:
    page = render(_parts())
    assert "<script" not in page and 'evil.example/x.png">' not in page
    # the model card, the data path, a gate scope, an approval comment, a ledger reason: each shown, as text
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 5
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)


def test_pictures_are_inline_and_unreadable_parts_are_named() -> None:
    page = render(_parts())
    assert page.count('src="data:image/png;base64,') == 1 and 'alt="ROC curve"' in page
    assert "could not be read" in page and "digest mismatch" in page
    assert "no shadow phase recorded" in page and "no live metrics or drift checks of this version yet" in page
    assert "REJECTED against Production v6" in page and "onnx" in page


def test_a_picture_that_cannot_be_drawn_is_a_warning_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> list:  # type: ignore[type-arg]
        raise ValueError("no rows to draw")

    with caplog.at_level(logging.WARNING, logger="tollgate"):
        assert drawn_safely(f"file://{tmp_path / 'mlruns'}", "no-such-run", "training", broken) == []
    assert "could not draw or log the training plots: ValueError: no rows to draw" in caplog.text
