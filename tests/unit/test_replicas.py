"""Gateway replicas without processes: the summed state, what a failed hand-on says, the status line, the
setting's bounds, and the refusal to run several replicas without the supervisor."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.replicas import Replicas, failures, from_sibling, summed
from tollgate.app.cli import main
from tollgate.app.commands.stack import _gateway_text
from tollgate.config import ServingConfig

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pipeline.yaml"


def test_summed_adds_every_counter_of_every_replica() -> None:
    a = {"predictions": {"1/champion": 5, "2/shadow": 1}, "errors": {"validation": 2}, "batches": 3, "batch_rows": 6}
    b = {"predictions": {"1/champion": 7}, "errors": {"shadow": 1}, "batches": 1, "batch_rows": 7, "shadow_compared": 4}
    total = summed([a, b])
    assert total["predictions"] == {"1/champion": 12, "2/shadow": 1}
    assert total["errors"] == {"validation": 2, "shadow": 1}
    assert (total["batches"], total["batch_rows"], total["shadow_compared"], total["shadow_disagreed"]) == (4, 13, 4, 0)


def test_a_change_not_taken_everywhere_names_each_replica_that_missed_it() -> None:
    ok = {"replica": 1, "ok": True, "status": 200, "body": {}}
    assert failures([ok]) is None
    down = {"replica": 2, "ok": False, "status": None, "error": "unreachable: ConnectError()"}
    refused = {"replica": 3, "ok": False, "status": 502, "error": "reload failed"}
    assert failures([ok, down, refused]) == (
        "replica 2 (no answer): unreachable: ConnectError(); replica 3 (502): reload failed"
    )


def test_tell_reaches_every_sibling_and_says_which_one_is_down() -> None:
    """A sibling's port with nothing accepting on it is an 'unreachable' answer, not an exception or a hang."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # a port no one listens on
        port = bound.getsockname()[1]
        replicas = Replicas(0, "127.0.0.1", (0, port), token="t", timeout_s=2)
        (answer,) = asyncio.run(replicas.tell("POST", "/admin/reload"))
    assert answer["replica"] == 1 and answer["ok"] is False and answer["error"].startswith("unreachable")
    assert from_sibling({b"x-tollgate-replica": b"0"}) and not from_sibling({})


def test_status_line_sums_and_lists_replicas_and_flags_disagreement() -> None:
    rows = [
        {"replica": 0, "port": 4001, "ok": True, "pid": 11, "predictions": 5, "champion": "1"},
        {"replica": 1, "port": 4002, "ok": False},
    ]
    state = {"predictions": {"1/champion": 5}, "errors": {}, "replicas": rows, "replicas_agree": False}
    text = _gateway_text(state)
    assert text.startswith("gateway: 5 predictions, errors: none, summed over 2 replicas (REPLICAS DISAGREE")
    assert "replica 0 port 4001: pid 11, 5 predictions" in text and "replica 1 port 4002: NOT ANSWERING" in text
    assert _gateway_text({"predictions": {"1/champion": 3}, "errors": {"validation": 1}}) == (
        "gateway: 3 predictions, errors: validation 1"
    )


@pytest.mark.parametrize("bad", [{"replicas": 0}, {"replicas": 65}, {"replica_base_port": 70000}])
def test_replica_settings_out_of_bounds_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValidationError, match=next(iter(bad))):
        ServingConfig(**bad)


def test_several_replicas_without_the_supervisor_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOLLGATE__SERVING__REPLICAS", "2")
    monkeypatch.setenv("TOLLGATE_HOME", str(tmp_path / "home"))
    assert main(["--config", str(CONFIG), "serve"]) == 2
    err = capsys.readouterr().err
    assert "serving.replicas is 2" in err and "--supervise" in err and "Traceback" not in err
