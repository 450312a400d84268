"""The retrain guard's claims: a retrain that failed before training frees the cooldown and budget, one that
reached training spends them, and a claim while another retrain runs is refused."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest

from tasks.data import DataVersionError
from tasks.retraining import (
    RELEASED,
    RetrainClaim,
    SnapshotFailed,
    claim_retrain,
    retrain_allowed,
    retrain_claims,
    settle_claim,
)
from tasks.validation import DataReadError
from tests.helpers import ROOT, bundled_config
from tollgate.config import TollgateConfig
from tollgate.paths import StatePaths

T0 = 1_000_000.0
HOUR = 3600.0


def _config(cooldown_hours: float = 24, per_week: int = 2) -> TollgateConfig:
    cfg = bundled_config()
    mon = cfg.monitoring.model_copy(
        update={"retrain_cooldown_hours": cooldown_hours, "max_retrains_per_week": per_week}
    )
    return cfg.model_copy(update={"monitoring": mon})


def _history(paths: StatePaths, cfg: TollgateConfig) -> list[dict[str, object]]:
    text = paths.retrain_history(cfg.project.registered_model).read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    "error",
    [SnapshotFailed("no snapshot"), DataReadError("unreadable"), DataVersionError("dirty tree")],
    ids=["snapshot", "data-read", "data-version"],
)
def test_a_retrain_that_failed_before_training_leaves_the_cooldown_free(tmp_path: Path, error: Exception) -> None:
    cfg, paths = _config(), StatePaths(tmp_path)
    claim = claim_retrain(cfg, paths, "tollgate.drift.detected", T0)
    assert claim.allowed and claim.id
    assert settle_claim(cfg, paths, claim, error, T0 + 60) == RELEASED
    again = claim_retrain(cfg, paths, "tollgate.drift.detected", T0 + 120)
    assert again.allowed, again.why
    # the outcome is in the history file, with the error that released it
    outcome = next(r for r in _history(paths, cfg) if r.get("status") == RELEASED)
    assert outcome["id"] == claim.id and type(error).__name__ in str(outcome["error"])


def test_released_claims_do_not_count_against_the_weekly_budget(tmp_path: Path) -> None:
    cfg, paths = _config(cooldown_hours=0, per_week=1), StatePaths(tmp_path)
    for i in range(3):
        claim = claim_retrain(cfg, paths, "manual", T0 + i * HOUR)
        assert claim.allowed, claim.why
        settle_claim(cfg, paths, claim, SnapshotFailed("x"), T0 + i * HOUR + 1)
    assert retrain_allowed(cfg, paths, T0 + 4 * HOUR) == (True, "allowed")


@pytest.mark.parametrize(
    ("error", "status"),
    [(None, "deployed"), (RuntimeError("fit blew up"), "failed")],
    ids=["deployed", "failed-in-training"],
)
def test_a_retrain_that_reached_training_spends_the_cooldown(
    tmp_path: Path, error: Exception | None, status: str
) -> None:
    cfg, paths = _config(), StatePaths(tmp_path)
    claim = claim_retrain(cfg, paths, "scheduled", T0)
    assert settle_claim(cfg, paths, claim, error, T0 + 600) == status
    refused = claim_retrain(cfg, paths, "tollgate.drift.detected", T0 + HOUR)
    assert not refused.allowed and refused.why.startswith("cooldown")
    assert claim_retrain(cfg, paths, "scheduled", T0 + 25 * HOUR).allowed


def test_a_claim_while_a_retrain_runs_is_refused_even_without_a_cooldown(tmp_path: Path) -> None:
    cfg, paths = _config(cooldown_hours=0, per_week=10), StatePaths(tmp_path)
    running = claim_retrain(cfg, paths, "tollgate.drift.detected", T0)
    assert running.allowed
    refused = claim_retrain(cfg, paths, "tollgate.performance.degraded", T0 + 60)
    assert not refused.allowed and refused.why.startswith("running")
    settle_claim(cfg, paths, running, None, T0 + 120)
    assert claim_retrain(cfg, paths, "manual", T0 + 180).allowed


def test_concurrent_claims_let_exactly_one_retrain_through(tmp_path: Path) -> None:
    cfg, paths = _config(cooldown_hours=0, per_week=10), StatePaths(tmp_path)
    results: list[RetrainClaim] = []
    start = threading.Barrier(8)

    def claim() -> None:
        start.wait()
        results.append(claim_retrain(cfg, paths, "tollgate.drift.detected", T0))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.allowed for r in results) == 1
    assert len(retrain_claims(_history(paths, cfg))) == 1


def test_history_lines_from_before_claims_still_count(tmp_path: Path) -> None:
    cfg, paths = _config(), StatePaths(tmp_path)
    history = paths.retrain_history(cfg.project.registered_model)
    history.parent.mkdir(parents=True)
    history.write_text(json.dumps({"at": T0, "reason": "scheduled"}) + "\n")
    allowed, why = retrain_allowed(cfg, paths, T0 + HOUR)
    assert not allowed and why.startswith("cooldown")


def test_only_an_allowed_claim_has_an_outcome(tmp_path: Path) -> None:
    cfg, paths = _config(), StatePaths(tmp_path)
    with pytest.raises(ValueError, match="allowed claim"):
        settle_claim(cfg, paths, RetrainClaim(False, "cooldown"), None, T0)


def _table_with_text_times(n: int = 40) -> pd.DataFrame:
    frame = pd.read_parquet(ROOT / "data" / "snapshot.parquet").head(n)
    ts = bundled_config().dataset.timestamp
    frame[ts] = pd.to_datetime(frame[ts]).dt.strftime("%Y-%m-%dT%H:%M:%SZ")  # ISO text, as a CSV holds it
    return frame


def test_the_retrain_snapshot_reads_a_csv_table_with_text_timestamps(tmp_path: Path) -> None:
    """Issue 33.2: the retrain snapshot reads the user's table the one way (CSV too), and its text timestamps and
    the log's datetimes end up as one UTC type; before, it failed on CSV ('Parquet magic bytes not found') and on
    text timestamps ('Expected bytes, got a Timestamp object')."""
    from tasks.ground_truth import ingest, read_labels
    from tasks.retraining import retrain_snapshot
    from tollgate.predlog import PredictionLog

    cfg = bundled_config()
    ds = cfg.dataset
    paths = StatePaths(tmp_path / "home")
    table = _table_with_text_times()
    table.to_csv(tmp_path / "table.csv", index=False)
    log = PredictionLog(paths.model_log(cfg.project.registered_model))
    features = table.iloc[0][cfg.features.all].to_dict()
    log.write(
        [
            {
                "prediction_id": f"p{i}",
                "request_id": f"p{i}",
                "ts": 1_767_225_600.0 + i,
                "entity_id": f"NEW{i}",
                "model_version": "1",
                "role": "champion",
                "score": 0.5,
                "decision": 1,
                "latency_ms": 1.0,
                "proba": None,
                "event_ts": None,
                "features": features,
            }
            for i in range(3)
        ]
    )
    log.close()
    labels = pd.DataFrame({ds.id: [f"NEW{i}" for i in range(3)], "label": [1, 0, 1], "label_time": ["2026-01-01"] * 3})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    ingest(paths.model_labels(cfg.project.registered_model), read_labels(tmp_path / "labels.csv", ds.id))

    out = pd.read_parquet(retrain_snapshot(cfg, paths, str(tmp_path / "table.csv")))
    assert len(out) == len(table) + 3
    assert str(out[ds.timestamp].dtype) == "datetime64[ns, UTC]"
    assert out[ds.timestamp].iloc[0] == pd.Timestamp(table[ds.timestamp].iloc[0])
    assert out.set_index(ds.id).loc["NEW1", ds.target] == 0


def test_a_table_the_snapshot_cannot_read_is_a_data_error_naming_it(tmp_path: Path) -> None:
    from tasks.retraining import retrain_snapshot

    cfg = bundled_config()
    bad = _table_with_text_times()
    bad.loc[3, cfg.dataset.timestamp] = "next tuesday"
    bad.to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(
        SnapshotFailed, match=rf"table.csv: column '{cfg.dataset.timestamp}': timestamps that do not parse"
    ):
        retrain_snapshot(cfg, StatePaths(tmp_path / "home"), str(tmp_path / "table.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SnapshotFailed, match=r"empty.csv: file is empty"):
        retrain_snapshot(cfg, StatePaths(tmp_path / "home"), str(tmp_path / "empty.csv"))
