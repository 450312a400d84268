"""Bad input through the real `tollgate` entry point, in a subprocess, against the session's live stack: never a
traceback, the exact exit code (1 a check said no, 2 usage/config/unreadable input), an error line that names the
file, column or setting, and nothing registered. Prefect's run logs (with the tracebacks) go to the command log
and to the Prefect API, not to the terminal.

Every case is one CLI call; they all run at once in one module fixture so the file costs about one `train`.
Each call has a state folder of its own ($TOLLGATE_HOME; the stack is the session's): two commands validating at
once in one state folder race on its Great Expectations file store (seen here as an internal error).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.helpers import ROOT, prefect_auth
from tollgate import ledger

MODEL = "cli-errors"
TRACEBACK = "Traceback (most recent call last)"
ENTRY = Path(sys.executable).parent / "tollgate"  # the [project.scripts] entry point


@dataclass(frozen=True)
class Case:
    """One CLI call: argv (built from the case folder), the exit code, phrases its stderr must hold."""

    name: str
    argv: Callable[[Path], list[str]]
    code: int
    phrases: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def _frames(folder: Path) -> None:
    """The bad inputs, next to each other in `folder`."""
    snapshot = pd.read_parquet(ROOT / "data" / "snapshot.parquet")
    snapshot.drop(columns=["usage_gb"]).to_parquet(folder / "missing_column.parquet")
    unseen = snapshot.copy()
    unseen.loc[unseen.index[:5], "payment_method"] = "crypto"
    unseen.to_parquet(folder / "unseen_category.parquet")
    (folder / "corrupt.parquet").write_bytes((ROOT / "data" / "snapshot.parquet").read_bytes()[:3000])
    (folder / "a_directory.parquet").mkdir()
    configs = folder / "project" / "configs"
    shutil.copytree(ROOT / "configs", configs)
    text = (configs / "pipeline.yaml").read_text()
    bad = re.sub(r"(\n  kind: )hist_gradient_boosting", r"\1random_forest_of_dreams", text, count=1)
    assert bad != text, "the bundled config no longer has model.kind: hist_gradient_boosting"
    (configs / "pipeline.yaml").write_text(bad)


def _data_cases(command: list[str]) -> list[Case]:
    """The same bad inputs for `train --data PATH` and `validate PATH`."""
    word = command[0]

    def on(name: str) -> Callable[[Path], list[str]]:
        return lambda d: [*command, str(d / name)]

    return [
        Case(f"{word}: missing file", on("absent.parquet"), 2, ("absent.parquet: no such file",)),
        Case(f"{word}: directory", on("a_directory.parquet"), 2, ("a_directory.parquet: is a directory",)),
        Case(
            f"{word}: corrupt parquet",
            on("corrupt.parquet"),
            2,
            ("corrupt.parquet: not a readable Parquet file",),
            # INFO, so the progress shows the Prefect run's link (the session runs Prefect at WARNING)
            (("PREFECT_LOGGING_LEVEL", "INFO"),),
        ),
        Case(f"{word}: missing column", on("missing_column.parquet"), 1, ("missing columns ['usage_gb']",)),
        Case(f"{word}: unseen category", on("unseen_category.parquet"), 1, ("column 'payment_method'", "'crypto'")),
        Case(
            f"{word}: bad config value",
            lambda d: ["--config", str(d / "project" / "configs" / "pipeline.yaml"), *on("absent.parquet")(d)],
            2,
            ("config error:", "pipeline.yaml: model.kind:"),
        ),
        Case(f"{word}: unknown env", lambda d: ["--env", "qa", *on("absent.parquet")(d)], 2, ("invalid choice: 'qa'",)),
        Case(
            f"{word}: bad override",
            on("absent.parquet"),
            2,
            ("config error:", "split.holdout_fraction"),
            (("TOLLGATE__SPLIT__HOLDOUT_FRACTION", "2"),),
        ),
    ]


CASES = [*_data_cases(["train", "--allow-dirty", "--data"]), *_data_cases(["validate"])]
# what only a data check can say (exit 1): the train message names what was not done
NOT_TRAINED = "no model was trained or registered"


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str
    seconds: float
    home: Path


def home(folder: Path, case: Case) -> Path:
    """The case's own state folder."""
    return folder / "homes" / re.sub(r"\W+", "-", case.name)


def _run(case: Case, folder: Path) -> Ran:
    env = {
        **os.environ,
        "TOLLGATE_HOME": str(home(folder, case)),
        "TOLLGATE__PROJECT__REGISTERED_MODEL": MODEL,
        **dict(case.env),
    }
    argv = [str(ENTRY)] if ENTRY.exists() else [sys.executable, "-m", "tollgate.app.cli"]
    start = time.monotonic()
    proc = subprocess.run([*argv, *case.argv(folder)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return Ran(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start, home(folder, case))


@pytest.fixture(scope="module")
def results(live_stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Every case's CLI call, run side by side."""
    folder = tmp_path_factory.mktemp("cli-errors")
    _frames(folder)
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = dict(zip([c.name for c in CASES], pool.map(lambda c: _run(c, folder), CASES), strict=True))
    return runs


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_named_error_and_an_exit_code(case: Case, results: dict[str, Ran]) -> None:
    ran = results[case.name]
    shown = f"exit {ran.code}\n--- stdout\n{ran.out}\n--- stderr\n{ran.err}"
    assert ran.code == case.code, shown
    assert TRACEBACK not in ran.out + ran.err, shown
    assert "| ERROR " not in ran.out + ran.err and "Task run failed" not in ran.err, shown  # Prefect's console
    # the error line is on stderr; validate's per-column failures are its result, on stdout
    said = ran.out if case.code == 1 and case.name.startswith("validate") else ran.err
    for phrase in case.phrases:
        assert phrase in said, shown
    if case.code == 1 and case.name.startswith("train"):
        assert NOT_TRAINED in ran.err, shown


def test_nothing_was_registered_or_recorded(live_stack: dict[str, str], results: dict[str, Ran]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(live_stack["mlflow"])
    assert client.search_registered_models(filter_string=f"name = '{MODEL}'") == []
    assert client.search_model_versions(f"name = '{MODEL}'") == []
    for where in [Path(live_stack["home"]), *(r.home for r in results.values())]:
        assert [e for e in ledger.read(where / "ledger.jsonl") if e.model == MODEL] == [], where


def test_the_traceback_is_in_the_command_log_and_the_prefect_api(
    live_stack: dict[str, str], results: dict[str, Ran]
) -> None:
    ran = results["train: corrupt parquet"]
    assert ran.out.startswith("validating "), ran.out
    link = re.search(r"Prefect flow run '[^']+': (\S+/runs/flow-run/([0-9a-f-]{36}))", ran.out)
    assert link, ran.out
    log = (ran.home / "logs" / "cli.log").read_text()
    assert TRACEBACK in log and "DataReadError" in log and "corrupt.parquet (pid " in log
    # Prefect's API handler still gets the task and flow run logs: the UI shows the failure and its traceback.
    deadline, messages = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        body = {"logs": {"flow_run_id": {"any_": [link.group(2)]}}, "limit": 200}
        resp = httpx.post(f"{live_stack['prefect']}/logs/filter", json=body, auth=prefect_auth())
        messages = [r["message"] for r in resp.json()]
        if any("DataReadError" in m for m in messages):
            break
        time.sleep(1)
    assert any("DataReadError" in m and TRACEBACK in m for m in messages), messages
