"""Monitoring on generated production periods, replayed through a real gateway, against real servers:
no-drift raises nothing, covariate drift is found on the shifted features only (and Evidently agrees),
concept drift is invisible to input drift but caught by the backfill, a segment-only shift is caught for
that segment, and a severe degradation rolls back automatically."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from flows.backfill import ground_truth_backfill
from flows.deploy import deploy_model
from flows.drift import drift_check
from flows.fan_out import over_parts
from tasks.drift import drift_of_parts, load_production_release, merge_partials, plan_drift
from tasks.estimation import estimate_now
from tasks.ground_truth import join_parts, labels_from_period, merge_live_metrics, plan_live_metrics
from tasks.reporting import evidently_verdicts
from tests.helpers import bundled_config
from tests.integration.live import Traffic, running_gateway, train
from tests.integration.monitoring_support import ROWS, Sink, prefect_events, replay
from tests.integration.monitoring_support import period as _period
from tollgate import ledger
from tollgate.predlog import read_log

COVARIATE = {"monthly_charges", "last_login_days", "usage_gb"}


@pytest.fixture(scope="module")
def world(live_stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    sink = Sink()
    # the log is sealed every 1,500 rows: each replayed period spans several parts (the Dask tests fan out over them)
    with running_gateway(live_stack, "monitoring-churn", log_rotate_rows=1500) as gw:
        ctx = gw["ctx"].with_config(alerts={"webhook_url": sink.url}, rollout={"auto_approve": True})
        v1 = train(ctx, monitoring={"live_degraded_at": 0.7})
        deploy_model(version=v1.version, config=ctx)
        yield {"gw": gw, "ctx": ctx, "sink": sink, "v1": v1, "tmp": tmp_path_factory.mktemp("labels")}
    sink.close()


def _drift(world: dict[str, Any], frame: pd.DataFrame) -> dict[str, Any]:
    return drift_check(since=replay(world["gw"]["url"], frame), config=world["ctx"])


def test_no_drift_period_raises_no_alert(world: dict[str, Any]) -> None:
    result = _drift(world, _period("none"))
    assert result["rows"] == ROWS
    assert not result["detected"] and result["drifted"] == [] and result["segments"] == []
    assert not result["alerted"] and world["sink"].bodies == []
    assert Path(result["report"]).exists()  # the Evidently HTML report


@pytest.fixture(scope="module")
def covariate(world: dict[str, Any]) -> dict[str, Any]:
    """The covariate-drift period replayed and checked once (its webhook posts counted from before it)."""
    before = len(world["sink"].bodies)
    result = _drift(world, _period("covariate_drift"))
    return {"result": result, "posts": world["sink"].bodies[before:]}


@pytest.fixture(scope="module")
def concept(world: dict[str, Any]) -> dict[str, Any]:
    """The concept-drift period replayed, drift-checked, and its labels ingested by a first backfill, once."""
    period = _period("concept_drift")
    drift = _drift(world, period)
    labels = world["tmp"] / "concept_labels.csv"
    labels_from_period(period, bundled_config()).to_csv(labels, index=False)
    before = len(world["sink"].bodies)
    first = ground_truth_backfill(labels=str(labels), config=world["ctx"])
    posts = world["sink"].bodies[before:]
    return {"drift": drift, "labels": labels, "first": first, "events": world["sink"].events()[before:], "posts": posts}


def test_covariate_drift_is_found_on_the_shifted_features_only(covariate: dict[str, Any]) -> None:
    result, new = covariate["result"], covariate["posts"]
    assert result["detected"] and set(result["drifted"]) == COVARIATE
    assert evidently_verdicts(result["evidently"], bundled_config()) == COVARIATE  # Evidently agrees
    assert [b["tollgate"]["event"] for b in new] == ["tollgate.drift.detected"]
    assert set(new[0]["tollgate"]["drifted"]) == COVARIATE and "Drift on monitoring-churn" in new[0]["text"]
    assert result["alerts"] == {"delivered": 1, "failed": [], "webhook": True}


def test_the_drift_check_on_dask_workers_equals_the_one_in_process(
    world: dict[str, Any], covariate: dict[str, Any]
) -> None:
    """compute.dask_address local:2 (issue 14): the covariate window's log parts fanned out over a Dask
    LocalCluster by prefect-dask give the very check the flow made in process: verdicts, statistics, sample."""
    ctx, window = world["ctx"], covariate["result"]["window"]
    plan = plan_drift.fn(ctx, load_production_release.fn(ctx), None, window["start"], window["end"])
    assert len(plan.parts) > 2
    here = merge_partials(over_parts("", drift_of_parts, len(plan.parts), 4, plan=plan), plan.scope)
    there = merge_partials(over_parts("local:2", drift_of_parts, len(plan.parts), 1, plan=plan), plan.scope)
    assert here[0].summary() == {k: covariate["result"][k] for k in here[0].summary()}
    assert there[0].summary() == here[0].summary()
    assert there[0].overall.rows_table() == here[0].overall.rows_table()
    assert {k: r.rows_table() for k, r in there[0].segments.items()} == {
        k: r.rows_table() for k, r in here[0].segments.items()
    }
    pd.testing.assert_frame_equal(there[1], here[1])


def _estimated_and_realized(world: dict[str, Any], window: dict[str, Any], period: pd.DataFrame) -> tuple[Any, float]:
    """The champion's estimated AUC over a replayed window (from the log alone), and the AUC its labels give."""
    from sklearn.metrics import roc_auc_score

    ctx, v1 = world["ctx"], world["v1"].version
    result = estimate_now(ctx, since=window["start"], until=window["end"] + 1e-3)
    (row,) = [
        r
        for r in result["rows"]
        if (r["model_version"], r["role"], r["scope"], r["window"]) == (v1, "champion", "overall", "all")
    ]
    logged = read_log(ctx.paths.model_log(world["gw"]["name"]), window["start"])
    logged = logged[(logged["ts"] <= window["end"]) & (logged["model_version"] == v1)]
    truth = logged.merge(period, left_on="entity_id", right_on="customer_id", validate="one_to_one")
    assert row["n"] == len(truth) == ROWS, (row, len(truth))
    return row, float(roc_auc_score(truth["churned"], truth["score"]))


def test_the_estimated_auc_follows_covariate_shift_and_misses_concept_shift(
    world: dict[str, Any], covariate: dict[str, Any], concept: dict[str, Any]
) -> None:
    """Issue 36: the release's calibration map (fitted on the gate's holdout) estimates the live AUC of a window
    before its labels arrive: inside the 95% interval under covariate shift, confidently wrong under concept shift
    (what the reconciliation with the labels is for)."""
    release = load_production_release.fn(world["ctx"])
    body = release.file("estimator.json")
    assert body["method"] and len(body["calibration"]["x"]) > 2 and body["quality"]["check_rows"] > 100
    assert body["map_se"] > 0 and len(body["calibration"]["counts"]) == len(body["calibration"]["x"]) - 1
    moved, realized = _estimated_and_realized(world, covariate["result"]["window"], _period("covariate_drift"))
    assert moved["low"] <= realized <= moved["high"], (moved, realized)
    wrong, realized = _estimated_and_realized(world, concept["drift"]["window"], _period("concept_drift"))
    assert realized < wrong["low"], (wrong, realized)  # the scores did not move, the truth did
    # when the labels came (the concept period's backfill), the estimate was checked against them: concept shift
    reconciled = concept["first"]["reconciliation"]
    (whole,) = reconciled["checked"]
    assert whole["inside"] is False and whole["realized"] < whole["estimated"]["low"], whole
    assert whole["calibration"]["shifted"] and whole["calibration"]["rows"] == ROWS, whole  # the labels vs the map
    assert reconciled["concept_shift"]["version"] == world["v1"].version
    assert wrong.get("unreliable", "").startswith("unreliable: concept shift since")  # flagged from then on
    # its own alert, after the realized drop's
    assert concept["events"] == ["tollgate.performance.degraded", "tollgate.estimate.concept_shift"]
    shift_post = [b for b in concept["posts"] if b["tollgate"]["event"] == "tollgate.estimate.concept_shift"]
    assert len(shift_post) == 1 and "concept shift since" in shift_post[0]["text"], shift_post


def test_segment_only_shift_is_caught_for_that_segment(world: dict[str, Any]) -> None:
    result = _drift(world, _period("segment_shift"))
    assert "region=south" in result["segments"]
    assert not {s for s in result["segments"] if s.startswith("region=")} - {"region=south"}
    # the headline agrees with the verdict and names the scope, even when the whole window alone would not drift
    assert (
        result["detected"] and result["headline"].startswith("drift detected") and "region=south" in result["headline"]
    )


def test_concept_drift_is_invisible_to_input_drift_but_caught_by_the_backfill(
    world: dict[str, Any], concept: dict[str, Any]
) -> None:
    result, first = concept["drift"], concept["first"]
    assert result["drifted"] == [] and not result["detected"]
    assert first["ingested"]["changed"] == ROWS
    assert first["verdict"]["status"] == "degraded" and first["verdict"]["labelled"] == ROWS
    assert first["action"] == "alerted"
    assert concept["events"][0] == "tollgate.performance.degraded"
    seg = {r["scope"] for r in first["rows"] if r["window"] == "all"}
    assert {"overall", "tier=gold", "region=south"} <= seg
    again = ground_truth_backfill(labels=str(concept["labels"]), config=world["ctx"])  # idempotent
    assert again["ingested"]["changed"] == 0
    assert again["verdict"]["status"] == first["verdict"]["status"]
    assert again["verdict"]["labelled"] == first["verdict"]["labelled"]


def test_the_label_join_on_dask_workers_equals_the_one_in_process(
    world: dict[str, Any], concept: dict[str, Any]
) -> None:
    """compute.dask_address local:2 (issue 14): backfill's join of the stored labels to every log part, fanned out
    over a Dask LocalCluster, gives the same labelled rows and live metrics, per version, role, segment, window."""
    ctx = world["ctx"]
    release = load_production_release.fn(ctx)
    plan = plan_live_metrics.fn(ctx, None, chunks=3)
    here = merge_live_metrics.fn(plan, release, over_parts("", join_parts, len(plan.parts), 4, plan=plan))
    there = merge_live_metrics.fn(plan, release, over_parts("local:2", join_parts, len(plan.parts), 1, plan=plan))
    assert len(plan.parts) > 1 and len(here.rows) > 3
    assert there.to_dict() == here.to_dict()


def test_severe_degradation_rolls_back_to_the_previous_release(
    world: dict[str, Any], concept: dict[str, Any], live_stack: dict[str, str]
) -> None:
    ctx, gw, v1 = world["ctx"], world["gw"], world["v1"]
    # v2: the same model, but its release treats a live AUC under 0.8 as severe
    v2 = train(ctx, monitoring={"live_degraded_at": 0.85, "live_severe_at": 0.8})
    with Traffic(gw["url"]):
        deploy_model(version=v2.version, config=ctx)
    assert httpx.get(f"{gw['url']}/health").json()["champion"] == v2.version
    replay(gw["url"], _period("concept_drift"))  # v2 now answers the same (labelled) customers
    before = len(world["sink"].bodies)
    result = ground_truth_backfill(labels=None, config=ctx)
    assert result["verdict"]["version"] == v2.version and result["verdict"]["status"] == "severe"
    assert result["action"] == "rolled_back"
    assert httpx.get(f"{gw['url']}/health").json()["champion"] == v1.version
    told = world["sink"].events()[before:]  # acting first, then v2's estimates found wrong by the same labels
    assert told[:2] == ["tollgate.performance.degraded", "tollgate.rollback.automatic"], told
    assert set(told[2:]) <= {"tollgate.estimate.concept_shift"}, told
    last = [
        e for e in ledger.read(Path(live_stack["home"]) / "ledger.jsonl", gw["name"]) if e.to_stage == "Production"
    ][-1]
    assert last.version == v1.version and last.reason.startswith("rollback: automatic: severe degradation")


def test_events_reach_the_prefect_server(
    covariate: dict[str, Any], concept: dict[str, Any], live_stack: dict[str, str]
) -> None:
    wanted = {"tollgate.drift.detected", "tollgate.performance.degraded"}
    events = prefect_events(live_stack["prefect"], "monitoring-churn", lambda ev: wanted <= {e["event"] for e in ev})
    assert wanted <= {e["event"] for e in events}


def test_retrain_uses_backfilled_labels_goes_through_the_gates_and_is_guarded(
    world: dict[str, Any], concept: dict[str, Any], live_stack: dict[str, str]
) -> None:
    from flows.retrain import retrain
    from tasks.gates import GateRejected

    ctx, gw = world["ctx"], world["gw"]
    reg = gw["registry"]
    champion = reg.one("Production").version
    outcome: dict[str, Any] = {}
    with Traffic(gw["url"]):
        try:
            outcome = retrain(reason="test: performance degraded", config=ctx)
        except GateRejected as exc:
            outcome = {"status": "rejected", "version": exc.version}
    assert outcome["status"] in ("deployed", "rejected"), outcome  # not skipped: this model never retrained
    snapshots = sorted((Path(live_stack["home"]) / "retrain" / gw["name"]).glob("snapshot-*.parquet"))
    assert snapshots, "no retrain snapshot was written"
    snap = pd.read_parquet(snapshots[-1])
    assert len(snap) > 12_000  # the training snapshot plus labelled production rows
    assert snap["customer_id"].str.startswith("C3").sum() >= ROWS  # the concept-drift customers, labelled
    new = reg.get(outcome["version"])
    if outcome["status"] == "rejected":  # a retrained model that fails the gate never serves
        assert new.stage == "None" and reg.one("Production").version == champion
    else:
        assert outcome["status"] == "deployed" and reg.one("Production").version == new.version
    assert httpx.get(f"{gw['url']}/health").json()["champion"] == reg.one("Production").version
    again = retrain(reason="test: again", config=ctx)
    assert again["status"] == "skipped" and again["why"].startswith("cooldown")
