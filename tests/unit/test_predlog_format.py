"""The prediction-log format: class probabilities and event times survive the live segment, compaction to
Parquet and reading; logs written before those fields existed read with them null."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from serving.scoring import log_record
from tollgate.predlog import BASE_COLUMNS, PredictionLog, compact, event_seconds, read_log

JAN_2024 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()


def _rec(i: int, proba: list[float] | None, event_ts: float | None, decision: int | float) -> dict[str, Any]:
    return {
        "prediction_id": f"p{i}",
        "request_id": f"p{i}",
        "ts": 100.0 + i,
        "entity_id": f"e{i}",
        "model_version": "1",
        "role": "champion",
        "score": 0.5,
        "decision": decision,
        "latency_ms": 1.0,
        "proba": proba,
        "event_ts": event_ts,
        "features": {"x": float(i), "event_time": "2024-01-01"},
    }


@pytest.mark.parametrize("compacted", [False, True])
def test_multiclass_probabilities_and_event_times_read_back_as_columns(tmp_path: Path, compacted: bool) -> None:
    log = PredictionLog(tmp_path, fsync=False)
    log.write([_rec(1, [0.2, 0.5, 0.3], JAN_2024, 1), _rec(2, [0.7, 0.2, 0.1], None, 0)])
    if compacted:
        log.close()
        assert [p.suffix for p in tmp_path.iterdir()] == [".parquet"]
    frame = read_log(tmp_path)
    assert [list(p) for p in frame["proba"]] == [[0.2, 0.5, 0.3], [0.7, 0.2, 0.1]]
    assert frame["event_ts"].iloc[0] == JAN_2024 and math.isnan(frame["event_ts"].iloc[1])
    assert list(frame["decision"]) == [1, 0] and list(frame["f.event_time"]) == ["2024-01-01"] * 2


def test_parts_without_probabilities_share_one_schema_with_parts_that_have_them(tmp_path: Path) -> None:
    """A binary release's part (proba all null) and a multiclass one's concatenate and compact alike."""
    first = PredictionLog(tmp_path, fsync=False)
    first.write([_rec(1, None, None, 0.25)])  # regression: decision is a float
    first.close()
    second = PredictionLog(tmp_path, fsync=False)
    second.write([_rec(2, [0.1, 0.1, 0.8], JAN_2024, 2)])
    second.close()
    parts = sorted(tmp_path.glob("*.parquet"))
    assert len(parts) == 2
    assert {str(pd.read_parquet(p).dtypes["proba"]) for p in parts} == {"object"}
    frame = read_log(tmp_path)
    assert frame["proba"].iloc[0] is None and list(frame["proba"].iloc[1]) == [0.1, 0.1, 0.8]


def test_a_log_written_before_proba_and_event_ts_reads_them_as_null(tmp_path: Path) -> None:
    old = {k: v for k, v in _rec(1, None, None, 1).items() if k not in ("proba", "event_ts")}
    flat = {**{k: [v] for k, v in old.items() if k != "features"}, "f.x": [1.0]}
    pd.DataFrame(flat).to_parquet(tmp_path / "seg-20240101T000000-1-000001.parquet", index=False)
    (tmp_path / "seg-20240101T000000-1-000002.sealed.jsonl").write_bytes(
        __import__("orjson").dumps({**old, "prediction_id": "p2"}) + b"\n"
    )
    frame = read_log(tmp_path)
    assert list(frame.columns[: len(BASE_COLUMNS)]) != [] and set(BASE_COLUMNS) <= set(frame.columns)
    assert frame["proba"].isna().all() and frame["event_ts"].isna().all() and len(frame) == 2
    compact(tmp_path)
    again = read_log(tmp_path)
    assert again["proba"].isna().all() and again["event_ts"].isna().all() and len(again) == 2


def test_log_record_carries_the_contract_fields() -> None:
    class Rel:
        version = "9"

    rec = log_record(
        prediction_id="p",
        request_id="p",
        ts=1.0,
        entity_id="e",
        release=Rel(),  # type: ignore[arg-type]
        role="shadow",
        score=0.6,
        decision=2,
        latency_ms=3.0,
        features={"x": 1},
        proba=[0.1, 0.3, 0.6],
        event_ts=JAN_2024,
    )
    assert {k for k in rec if k != "features"} == set(BASE_COLUMNS)
    assert rec["proba"] == [0.1, 0.3, 0.6] and rec["event_ts"] == JAN_2024 and rec["model_version"] == "9"


@pytest.mark.parametrize(
    ("value", "fmt", "expected"),
    [
        ("2024-01-01", "auto", JAN_2024),
        ("2024-01-01T00:00:00Z", "auto", JAN_2024),
        ("2024-01-01T01:00:00+01:00", "auto", JAN_2024),
        (datetime(2024, 1, 1), "auto", JAN_2024),  # naive means UTC
        (JAN_2024, "epoch_s", JAN_2024),
        (JAN_2024 * 1000, "epoch_ms", JAN_2024),
        (2024, "year", JAN_2024),
        ("2024-01-01", "year", JAN_2024),  # conformed data and smoke records carry ISO text for any format
        (None, "auto", None),
        (None, "year", None),
    ],
)
def test_event_times_are_read_as_the_schema_declares(value: Any, fmt: str, expected: float | None) -> None:
    assert event_seconds(value, fmt) == expected


@pytest.mark.parametrize(
    ("value", "fmt", "phrase"),
    [
        ("yesterday", "auto", "ISO 8601"),
        (1704067200, "auto", "ISO 8601"),
        ("1704067200", "epoch_s", "ISO 8601"),
        ([2024], "year", "expected a number"),
        (True, "epoch_ms", "expected a number"),
        (float("nan"), "epoch_s", "expected a number"),
        (2024.5, "year", "whole year"),
        (0, "year", "whole year"),
    ],
)
def test_a_malformed_event_time_is_named(value: Any, fmt: str, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        event_seconds(value, fmt)


def test_a_field_sent_with_two_json_types_still_compacts_to_parquet(tmp_path: Path) -> None:
    """One client sends the event time as ISO text, another as epoch seconds (both valid for format epoch_s):
    the sealed segment still becomes a Parquet part, the values kept as text."""
    from tollgate.predlog import records_to_frame

    def rec(i: int, when: object) -> dict[str, object]:
        return {
            "prediction_id": f"p{i}",
            "request_id": f"p{i}",
            "ts": 1.0 + i,
            "entity_id": str(i),
            "model_version": "1",
            "role": "champion",
            "score": 0.5,
            "decision": 1,
            "latency_ms": 1.0,
            "features": {"x": 1.5, "event_time": when, "flag": True if i else 3},
        }

    frame = records_to_frame([rec(0, "2026-01-01T00:00:00"), rec(1, 1767225600)])
    assert frame["f.event_time"].tolist() == ["2026-01-01T00:00:00", "1767225600"]
    assert frame["f.x"].tolist() == [1.5, 1.5]
    frame.to_parquet(tmp_path / "ok.parquet")  # one Arrow type per column


def test_a_segment_sealed_or_converted_between_listing_and_reading_is_still_read(tmp_path: Path) -> None:
    """A reader lists the live segment; the gateway seals it (rotation), then compaction turns it into Parquet:
    the rows are read from wherever the segment went, once (the rollout's phase analysis once missed them)."""
    from tollgate.predlog import _to_parquet, log_parts, part_frames

    log = PredictionLog(tmp_path, fsync=False)
    log.write([_rec(i, None, None, 1) for i in range(5)])
    listed = log_parts(tmp_path)
    assert [p.suffix for p in listed] == [".jsonl"]
    log._rotate()  # sealed: seg-...sealed.jsonl
    assert sum(len(f) for f in part_frames(listed[0])) == 5
    sealed = next(tmp_path.glob("*.sealed.jsonl"))
    _to_parquet(sealed)  # converted: seg-....parquet
    assert sum(len(f) for f in part_frames(listed[0])) == 5
    assert sum(len(f) for f in part_frames(sealed)) == 5
    assert len(read_log(tmp_path)) == 5 and [p.suffix for p in log_parts(tmp_path)] == [".parquet", ".jsonl"]
    log.close()
