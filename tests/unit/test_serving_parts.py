"""Prediction log durability rules and request validation, without servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving.release import Routing
from serving.schema import RequestSchema
from tests.helpers import GOOD_RECORD, bundled_config
from tollgate.predlog import PredictionLog, compact, read_log


def _rec(i: int) -> dict[str, object]:
    return {
        "prediction_id": f"p{i}",
        "request_id": f"p{i}",
        "ts": 100.0 + i,
        "entity_id": f"e{i}",
        "model_version": "1",
        "role": "champion",
        "score": 0.5,
        "decision": 0,
        "latency_ms": 1.0,
        "features": {"tenure_months": i},
    }


def test_rotation_sealing_compaction_and_reading_lose_nothing(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, fsync=True, rotate_rows=100)
    for i in range(0, 250, 5):
        log.write([_rec(j) for j in range(i, i + 5)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert sum(".sealed." in n for n in names) == 2  # the gateway only seals; no pandas in the request path
    assert len(read_log(tmp_path)) == 250
    compact(tmp_path)
    assert sum(n.endswith(".parquet") for n in os.listdir(tmp_path)) == 2
    frame = read_log(tmp_path, since=200.0)
    assert len(frame) == 150 and frame["f.tenure_months"].min() == 100
    log.close()
    assert all(n.endswith(".parquet") for n in os.listdir(tmp_path)) and len(read_log(tmp_path)) == 250


def test_a_torn_last_line_from_a_crash_is_skipped(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, fsync=False)
    log.write([_rec(1), _rec(2)])
    with open(log.path, "ab") as fh:
        fh.write(b'{"prediction_id": "p3", "sco')  # a write cut short by SIGKILL: never acknowledged
    assert list(read_log(tmp_path)["prediction_id"]) == ["p1", "p2"]


def test_duplicates_from_an_interrupted_compaction_are_dropped(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, fsync=False)
    log.write([_rec(1), _rec(2)])
    log.close()
    part = next(tmp_path.glob("*.parquet"))
    (tmp_path / part.name.replace(".parquet", ".sealed.jsonl")).write_bytes(
        b"".join(__import__("orjson").dumps(_rec(i)) + b"\n" for i in (1, 2))
    )
    assert len(read_log(tmp_path)) == 2


@pytest.fixture(scope="module")
def schema() -> RequestSchema:
    return RequestSchema(bundled_config())


GOOD = GOOD_RECORD


@pytest.mark.parametrize(
    ("change", "field", "phrase"),
    [
        ({"tenure_months": 2.5}, "tenure_months", "expected an integer"),
        ({"tenure_months": True}, "tenure_months", "expected a number"),
        ({"monthly_charges": float("inf")}, "monthly_charges", "expected a number"),
        ({"support_calls_90d": None}, "support_calls_90d", "must not be null"),
        ({"usage_gb": 99999}, "usage_gb", "outside the allowed range"),
        ({"plan": "gold"}, "plan", "is not one of"),
        ({"plan": 3}, "plan", "expected a string"),
        ({"autopay": "true"}, "autopay", "expected true or false"),
        ({"customer_id": ""}, "customer_id", "entity id is required"),
        ({"churn_reason": "x"}, "churn_reason", "unknown field"),
    ],
)
def test_each_bad_field_is_named(schema: RequestSchema, change: dict[str, object], field: str, phrase: str) -> None:
    errors = schema.errors({**GOOD, **change}, "records[2].")
    assert [e["field"] for e in errors] == [f"records[2].{field}"] and phrase in errors[0]["error"]


def test_a_good_record_and_nullable_fields_pass(schema: RequestSchema) -> None:
    assert schema.errors(GOOD, "") == []
    missing = dict(GOOD)
    missing.pop("usage_gb")
    assert schema.errors(missing, "") == [{"field": "usage_gb", "error": "field required"}]
    assert schema.errors([1, 2], "records[0].")[0]["field"] == "records[0]"


def test_canary_assignment_is_sticky_and_close_to_the_share() -> None:
    class Fake:
        version = "7"

    routing = Routing(champion=None, challenger=Fake(), mode="canary", share=0.2)  # type: ignore[arg-type]
    picks = [routing.is_canary(f"C{i}") for i in range(20_000)]
    assert 0.18 < sum(picks) / len(picks) < 0.22
    assert picks == [routing.is_canary(f"C{i}") for i in range(20_000)]
    assert not Routing(champion=None, challenger=Fake(), mode="shadow").is_canary("C1")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tier_not_a_feature() -> RequestSchema:
    """The bundled schema with the segment column 'tier' kept out of the model's features."""
    cfg = bundled_config()
    cats = [c for c in cfg.features.categorical if c != "tier"]
    return RequestSchema(cfg.model_copy(update={"features": cfg.features.model_copy(update={"categorical": cats})}))


@pytest.mark.parametrize(
    ("change", "field", "phrase"),
    [
        ({"event_time": "last tuesday"}, "event_time", "ISO 8601"),
        ({"event_time": 1704067200}, "event_time", "ISO 8601"),
        ({"tier": "platinum"}, "tier", "is not one of"),
        ({"tier": 3}, "tier", "expected a string"),
        ({"churned": 1}, "churned", "the target is not an input"),
    ],
)
def test_every_schema_column_a_request_carries_is_checked_and_named(
    tier_not_a_feature: RequestSchema, change: dict[str, object], field: str, phrase: str
) -> None:
    errors = tier_not_a_feature.errors({**GOOD, **change}, "records[0].")
    assert [e["field"] for e in errors] == [f"records[0].{field}"] and phrase in errors[0]["error"], errors


@pytest.mark.parametrize("change", [{}, {"event_time": None}, {"tier": None}, {"event_time": "2024-03-01T12:00:00Z"}])
def test_the_timestamp_and_non_feature_segments_are_optional(
    tier_not_a_feature: RequestSchema, change: dict[str, object]
) -> None:
    record = {k: v for k, v in {**GOOD, **change}.items() if k != "tier" or "tier" in change}
    assert tier_not_a_feature.errors(record, "") == []
    logged = tier_not_a_feature.logged_values(record)
    assert "customer_id" not in logged and set(change) <= set(logged)


def test_with_extra_columns_allowed_the_target_is_ignored_not_logged() -> None:
    cfg = bundled_config()
    schema = RequestSchema(
        cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"extra_columns": "allow"})})
    )
    record = {**GOOD, "churned": 1, "note": "x"}
    assert schema.errors(record, "") == []
    assert "churned" not in schema.logged_values(record) and "note" not in schema.logged_values(record)


def test_a_lone_client_stops_waiting_for_company_and_load_brings_the_wait_back(tmp_path: Path) -> None:
    """The batcher waits max_batch_wait_ms for more requests to join a batch, except for a lone client: after
    LONE_STREAK one-request batches in a row its requests are taken at once; two queued together (load) bring
    the wait back."""
    import asyncio
    import time

    from serving.batcher import LONE_STREAK, Batcher, Job
    from serving.metrics import GatewayMetrics
    from tollgate.config import ServingConfig
    from tollgate.paths import StatePaths

    wait_s = 0.05
    batcher = Batcher(
        ServingConfig(max_batch_wait_ms=wait_s * 1000), GatewayMetrics(StatePaths(tmp_path), "m"), lambda _: None
    )

    async def collect(jobs: int) -> tuple[int, float]:
        queue: asyncio.Queue[Job] = asyncio.Queue()
        for _ in range(jobs):
            queue.put_nowait(Job([{}], Routing(None), asyncio.get_running_loop().create_future(), 0.0))
        began = time.perf_counter()
        got, _ = await batcher._collect(queue)
        return len(got), time.perf_counter() - began

    async def scenario() -> list[tuple[int, float]]:
        return [await collect(1) for _ in range(LONE_STREAK + 1)] + [await collect(2), await collect(1)]

    took = asyncio.run(scenario())
    try:
        assert all(n == 1 and s >= wait_s * 0.9 for n, s in took[:LONE_STREAK])  # waited for company
        assert took[LONE_STREAK][1] < wait_s / 2  # a lone client now: taken at once
        assert took[LONE_STREAK + 1][0] == 2  # two at once: load
        assert took[LONE_STREAK + 2][1] >= wait_s * 0.9  # so the next batch waits again
    finally:
        batcher.executor.shutdown()
