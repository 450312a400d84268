"""A starter config from a table (issue 33.3): guesses said in comments, and a config that names only project,
dataset, features and model takes the task type's documented defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tollgate.app.starter import StarterError, render, starter_config
from tollgate.config import ConfigError, load_config

N = 60


def _table(target: pd.Series) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(N)],
            "created_at": pd.date_range("2026-01-01", periods=N, freq="h").strftime("%Y-%m-%dT%H:%M:%SZ"),
            "amount": rng.normal(50, 10, N),
            "items": rng.integers(1, 5, N),
            "channel": rng.choice(["web", "shop", "phone"], N),
            "gift": rng.choice([True, False], N),
            "y": target,
        }
    )


def _write(tmp_path: Path, frame: pd.DataFrame, **kw: str) -> Path:
    (tmp_path / "configs").mkdir(exist_ok=True)
    frame.to_csv(tmp_path / "table.csv", index=False)
    starter = starter_config(frame, "y", kw.get("task", "auto"), "table.csv", "shop")
    out = tmp_path / "configs" / "shop.yaml"
    out.write_text(render(starter, "table.csv", "y"))
    return out


@pytest.mark.parametrize(
    ("target", "task", "values"),
    [
        (pd.Series(np.arange(N) % 2, dtype=float), "binary", [0, 1]),  # 0.0/1.0 floats
        (pd.Series(np.arange(N) % 2 == 0), "binary", [False, True]),  # bools
        (pd.Series(np.arange(N) % 2 + 1), "binary", [1, 2]),
        (pd.Series(np.where(np.arange(N) % 2, "yes", "no")), "binary", ["no", "yes"]),
        (pd.Series(np.arange(N) % 3), "multiclass", [0, 1, 2]),
        (
            pd.Series(np.array(["high street", "online €", "phone+"])[np.arange(N) % 3]),
            "multiclass",
            ["high street", "online €", "phone+"],
        ),
        (pd.Series(np.linspace(0, 100, N)), "regression", None),
    ],
)
def test_a_starter_config_passes_config_check_and_says_its_guesses(
    tmp_path: Path, target: pd.Series, task: str, values: list[int] | None
) -> None:
    path = _write(tmp_path, _table(target))
    cfg = load_config(path, "dev", environ={}).config
    assert cfg.model.task == task and cfg.dataset.id == "order_id" and cfg.dataset.timestamp == "created_at"
    assert cfg.dataset.columns["y"].values == values
    assert cfg.features.categorical == ["channel"] and cfg.features.boolean == ["gift"]
    assert cfg.dataset.segments == []
    text = path.read_text()
    assert "# guessed: id (by its name" in text and "# guessed: timestamp (by its name" in text
    assert f"# guessed: {task}" in text and "left for you" in text
    assert cfg.rollout.shadow_requests == 200 and cfg.monitoring.psi_threshold == 0.2  # the documented defaults
    if task == "binary":  # the positive class is written out and said to be a guess
        assert cfg.dataset.columns["y"].positive == values[-1] and "the class whose probability is the score" in text
    if task == "regression":
        assert 0 < cfg.gates.non_inferiority_margin < cfg.monitoring.live_degraded_at < cfg.monitoring.live_severe_at


def test_epoch_seconds_named_like_a_time_are_the_timestamp(tmp_path: Path) -> None:
    frame = _table(pd.Series(np.arange(N) % 2)).drop(columns="created_at")
    frame["recorded at"] = 1_788_000_000 + np.arange(N) * 60
    cfg = load_config(_write(tmp_path, frame), "dev", environ={}).config
    assert cfg.dataset.timestamp == "recorded at" and cfg.dataset.columns["recorded at"].format == "epoch_s"


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (lambda f: f.drop(columns="created_at"), "no timestamp column found"),
        (lambda f: f.assign(y=[f"note {i}" for i in range(N)]), "60 distinct values"),
        (lambda f: f.assign(y=1), "are not class labels: a classification target has 2 to 20 classes"),
    ],
)
def test_a_table_that_cannot_give_a_config_is_named(change: object, phrase: str) -> None:
    frame = change(_table(pd.Series(np.arange(N) % 2)))  # type: ignore[operator]
    with pytest.raises(StarterError, match=phrase.replace("[", r"\[").replace("]", r"\]")):
        starter_config(frame, "y", "auto", "table.csv", "shop")


def test_a_config_of_four_sections_runs_on_defaults_and_a_regression_names_what_it_lacks(tmp_path: Path) -> None:
    path = _write(tmp_path, _table(pd.Series(np.arange(N) % 2)))
    body = yaml.safe_load(path.read_text())
    assert set(body) == {"project", "dataset", "features", "model"}
    body["model"] = {"task": "regression"}
    body["dataset"]["columns"]["y"] = {"type": "float"}
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError) as err:
        load_config(path, "dev", environ={})
    assert any("gates.non_inferiority_margin: required for a regression" in p for p in err.value.problems)
