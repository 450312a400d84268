"""The command table: every command documents itself, `--help` works for each, bad input exits 2 without a
traceback, and the app layer changes settings through Context variants, never through os.environ."""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import pytest

from tollgate.app.cli import COMMANDS, GROUPS, main
from tollgate.app.commands.stack import status
from tollgate.app.demo_report import DemoSummary, last_rollback
from tollgate.app.services import servers_env
from tollgate.config import load_config
from tollgate.context import make_context
from tollgate.ledger import LedgerEntry
from tollgate.signals import record_alert_failure, record_signals

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "pipeline.yaml"


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_every_command_has_help_and_its_help_exits_0(command, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert command.help.strip(), command.name
    assert all(a.options.get("help") for a in command.args), command.name
    with pytest.raises(SystemExit) as done:
        main([*command.name.split(), "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert " ".join(command.help.split()[:6]) in out  # the table's text is what --help shows


@pytest.mark.parametrize("words", [[], *[[g] for g in GROUPS]], ids=["tollgate", *GROUPS])
def test_top_level_and_group_help_list_their_commands(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    depth = len(words)
    names = {c.name.split()[depth] for c in COMMANDS if c.name.split()[:depth] == words}
    assert names and all(name in out for name in names)


@pytest.mark.parametrize(
    "argv",
    [["nope"], ["--env", "qa", "status"], ["deploy"], ["drift", "--window", "soon"], ["data"], ["approve", "3"]],
    ids=["unknown command", "unknown env", "missing version", "bad number", "missing action", "missing --by"],
)
def test_usage_errors_exit_2_without_traceback(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "usage: tollgate" in err and "Traceback" not in err


def test_a_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "none.yaml"), "history"]) == 2
    err = capsys.readouterr().err
    assert "file not found" in err and "Traceback" not in err


def test_servers_env_gives_a_child_process_the_same_servers_as_a_variant() -> None:
    variant = make_context(CONFIG, "dev").with_config(servers={"gateway_port": 18123, "work_pool": "on"})
    child = load_config(CONFIG, "dev", environ=servers_env(variant.config.servers)).config
    assert child.servers == variant.config.servers


def test_status_shows_failed_alerts_and_signals_per_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = make_context(CONFIG, "dev", home=tmp_path / "home")
    model = ctx.config.project.registered_model
    record_signals(ctx.paths, model, drift_detected=1, live_status="degraded")
    record_alert_failure(ctx.paths, model, "tollgate.drift.detected", "webhook refused")
    record_alert_failure(ctx.paths, model, "tollgate.rollback.automatic", "webhook refused")
    assert status(ctx, argparse.Namespace(json=True)) == 1  # nothing runs in this state folder
    body = json.loads(capsys.readouterr().out)
    (row,) = body["models"]
    assert row["model"] == model and row["failed_alerts"] == 2
    assert row["last_failed_alert"]["event"] == "tollgate.rollback.automatic"
    assert row["signals"] == {"drift_detected": 1, "live_status": "degraded"}
    assert {s["service"] for s in body["services"]} >= {"prefect-server", "mlflow-server"}
    status(ctx, argparse.Namespace(json=False))
    out = capsys.readouterr().out
    assert "drift_detected=1, live_status=degraded" in out and "tollgate.rollback.automatic at" in out


def _entry(version: str, frm: str, to: str, reason: str) -> LedgerEntry:
    return LedgerEntry("m", version, frm, to, "tollgate", reason, at=f"t{version}{to}")


def test_last_rollback_names_from_to_and_when() -> None:
    entries = [
        _entry("2", "Production", "Archived", "replaced by version 3: deploy"),
        _entry("3", "Staging", "Production", "approved"),
        _entry("3", "Production", "Archived", "replaced by version 2: rollback: automatic: severe"),
        _entry("2", "Archived", "Production", "rollback: automatic: severe"),
    ]
    assert last_rollback(entries) == {
        "from": "3",
        "to": "2",
        "at": "t2Production",
        "who": "tollgate",
        "reason": "rollback: automatic: severe",
    }
    assert last_rollback(entries[:2]) is None


def test_demo_summary_prints_shown_facts_and_serialises_all_of_them() -> None:
    summary = DemoSummary(model="m", links={"state folder": "/tmp/x"})
    summary.add("drift: normal period", "no drift", {"rows": 1500}, detected=False, drifted=[])
    summary.versions["v1"] = "1"
    summary.registry = [{"version": "1", "stage": "Production", "gate_passed": True, "gate_failures": "none"}]
    assert "  drift: normal period       no drift  [rows=1500]" in summary.lines("/tmp/x")
    assert "  v1   Production gate passed: true  none" in summary.lines("/tmp/x")
    body = json.loads(json.dumps(summary.to_dict()))
    assert body["steps"] == [
        {"step": "drift: normal period", "outcome": "no drift", "rows": 1500, "detected": False, "drifted": []}
    ]
    assert body["versions"][0]["demo_name"] == "v1" and body["ledger_entries"] == 0


def _environ_writes(path: Path) -> list[str]:
    """Lines of `path` that change os.environ (assignment, del, update/setdefault/pop, putenv)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else []
        for t in targets:
            if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "os.environ":
                found.append(f"{path.name}:{node.lineno}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, name = ast.unparse(node.func.value), node.func.attr
            if (owner == "os.environ" and name in ("update", "setdefault", "pop", "clear")) or name == "putenv":
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_the_app_layer_and_benchmarks_never_edit_the_environment_nor_read_proc() -> None:
    files = [*sorted((ROOT / "tollgate" / "app").rglob("*.py")), *sorted((ROOT / "bench").glob("*.py"))]
    assert not [w for f in files for w in _environ_writes(f)]
    assert not [f.name for f in files if "/proc" in f.read_text()]


@pytest.mark.parametrize(
    "source",
    [
        'os.environ["X"] = "1"\n',
        'del os.environ["X"]\n',
        "os.environ.update(X='1')\n",
        'os.environ.setdefault("X", "1")\n',
    ],
)
def test_the_environment_check_catches_each_kind_of_write(tmp_path: Path, source: str) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n" + source)
    assert _environ_writes(probe) == ["probe.py:2"]


def test_demo_json_prints_only_the_summary_object_on_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tollgate demo --json`: progress goes to stderr, stdout is one JSON object (the run itself is the e2e test)."""
    import tollgate.app.demo as demo_module
    from tollgate.context import client_env
    from tollgate.secrets import CREDENTIAL_VARS

    ctx = make_context(CONFIG, "dev", home=tmp_path)
    # The command activates the demo's folder (with the logins it makes there): restore after.
    for key in (*client_env(ctx.config.servers, ctx.paths), *CREDENTIAL_VARS):
        monkeypatch.setenv(key, "restored after the test")
    monkeypatch.setenv("TOLLGATE_HOME", str(tmp_path))

    def fake_run(run_ctx, interactive: bool, say) -> DemoSummary:  # type: ignore[no-untyped-def]
        say("[1/8] progress ...")
        print("a library printing to stdout")
        summary = DemoSummary(model="m", links={"state folder": str(run_ctx.paths.home)})
        summary.add("train v1", "Staging", {"gate": "none: first model"}, version="1")
        return summary

    monkeypatch.setattr(demo_module, "run_demo", fake_run)
    assert main(["--config", str(CONFIG), "demo", "--json"]) == 0
    captured = capsys.readouterr()
    body = json.loads(captured.out)
    assert body["steps"][0]["version"] == "1" and body["state_folder"].startswith(str(tmp_path))
    assert "[1/8] progress" in captured.err and "a library printing" in captured.err


# -- errors and logs: one line and an exit code, the traceback in the command log ---------------------------------
def test_every_known_error_names_a_real_exception_class() -> None:
    import importlib

    from tollgate.app.cli import KNOWN_ERRORS

    for key, (code, prefix) in KNOWN_ERRORS.items():
        module, name = key.split(":")
        cls = getattr(importlib.import_module(module), name)
        assert isinstance(cls, type) and issubclass(cls, Exception), key
        assert code in (1, 2) and prefix, key


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        ("tasks.validation:DataReadError", 2, "error: x.parquet: no such file"),
        ("tasks.gates:GateRejected", 1, None),
        ("tasks.ground_truth:LabelsError", 2, "error: x.parquet: no such file"),
        ("tollgate.registry:RegistryError", 2, "error: x.parquet: no such file"),
        ("builtins:PermissionError", 2, "error: x.parquet: no such file"),
    ],
)
def test_an_error_a_flow_raises_maps_to_its_exit_code_without_traceback(
    error: str, code: int, line: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    module, name = error.split(":")
    cls = getattr(importlib.import_module(module), name)
    exc = cls.__new__(cls)
    Exception.__init__(exc, "x.parquet: no such file")
    _raising(monkeypatch, exc)
    assert main(["history"]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "x.parquet: no such file" in err
    if line:
        assert err.strip() == line


def _raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """`tollgate history` raises `exc` (it stands in for any command whose flow raised it)."""
    from tollgate import ledger

    def read(path: Path) -> list[LedgerEntry]:
        raise exc

    monkeypatch.setattr(ledger, "read", read)


def test_an_internal_error_is_one_line_with_its_traceback_in_the_command_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOLLGATE_HOME", str(tmp_path))
    _raising(monkeypatch, RuntimeError("the ledger melted"))
    assert main(["history"]) == 1
    err = capsys.readouterr().err
    log = tmp_path / "logs" / "cli.log"
    assert err.strip() == f"internal error: RuntimeError: the ledger melted (full traceback in {log})"
    text = log.read_text()
    assert "tollgate history (pid " in text and "Traceback (most recent call last)" in text
    assert "RuntimeError: the ledger melted" in text

    with pytest.raises(RuntimeError, match="the ledger melted"):  # --verbose: the traceback, as Python shows it
        main(["--verbose", "history"])
    assert log.read_text().count("Traceback (most recent call last)") == 2


def test_verbose_is_a_global_option_before_or_after_the_command() -> None:
    from tollgate.app.cli import build_parser

    assert build_parser().parse_args(["-v", "history"]).verbose
    assert build_parser().parse_args(["history", "--verbose"]).verbose
    assert not build_parser().parse_args(["history"]).verbose


def test_library_output_and_prefect_logs_go_to_the_log_file_progress_to_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from tollgate.app.output import Phrase, command_log, library_output
    from tollgate.paths import StatePaths

    task_runs = logging.getLogger("prefect.task_runs")
    level = task_runs.level
    stages: dict[str, Phrase] = {"train_model": "training ...", "gate": lambda p: p["missing"]}
    with command_log(StatePaths(tmp_path), ["train"]) as log, library_output(stages):
        print("a library printing to stdout")
        print("a library printing to stderr", file=sys.stderr)
        extra = {"task_name": "train_model", "task_run_name": "train_model-1"}
        task_runs.debug("Created task run 'train_model-1' for task 'train_model'", extra=extra)
        task_runs.debug("Created task run 'gate-1' for task 'gate'", extra={"task_name": "gate"})
        task_runs.debug("Created task run 'other-1' for task 'other'", extra={"task_name": "other"})
        try:
            raise ValueError("bad data")
        except ValueError:
            task_runs.error("Task run failed with exception: ValueError('bad data')", exc_info=True, extra=extra)
    captured = capsys.readouterr()
    assert "training ..." in captured.out and "gate ..." in captured.out  # a phrase that fails: the task's name
    assert "other" not in captured.out
    for noise in ("a library printing", "bad data", "Traceback"):
        assert noise not in captured.out + captured.err
    text = log.path.read_text()
    assert "a library printing to stdout" in text and "a library printing to stderr" in text
    assert "[train_model-1] - Task run failed with exception" in text and "Traceback" in text
    assert "Created task run" not in text  # asked for by the progress handler only: nobody else sees it
    assert task_runs.level == level and not any(h.filters for h in task_runs.handlers)


def test_verbose_shows_prefect_logs_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from tollgate.app.output import command_log, library_output
    from tollgate.paths import StatePaths

    with command_log(StatePaths(tmp_path), ["train"], verbose=True), library_output():
        print("a library printing")
        logging.getLogger("prefect.flow_runs").error("Encountered exception during execution")
    captured = capsys.readouterr()
    assert "a library printing" in captured.out and "Encountered exception during execution" in captured.err
