"""training_pipeline against the real Prefect and MLflow servers: lineage, release context, gates, ledger."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.training import training_pipeline
from tasks.gates import GateRejected
from tasks.tracking import artifact_key
from tasks.validation import ValidationFailed
from tests.helpers import ROOT, bundled_config
from tests.integration.live import model_context
from tollgate import ledger
from tollgate.context import Context, make_context
from tollgate.registry import Registry
from tollgate.release import load_release, load_release_file
from tollgate.synthetic import generate, write_parquet

CONFIG = str(ROOT / "configs" / "pipeline.yaml")
RELEASE_FILES = (
    "config.json",
    "expectation_suite.json",
    "reference_profile.json",
    "evaluation.json",
    "data_version.json",
    "classes.json",
    "model_card.md",
    "gate_verdict.json",
)


@pytest.fixture()
def model_name(request: pytest.FixtureRequest) -> str:
    """A registered-model name of this test's own, so tests never see each other's versions."""
    return f"t-{request.node.name}".replace("[", "-").replace("]", "")[:60]


@pytest.fixture()
def ctx(model_name: str) -> Context:
    """The Context the test's flows run with: the bundled config for this test's own model."""
    return model_context(model_name)


@pytest.fixture(scope="module")
def periods(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    gen = bundled_config().generation
    assert gen is not None
    folder = tmp_path_factory.mktemp("periods")
    out = {}
    for scenario in ("concept_drift", "none"):
        out[scenario] = folder / f"{scenario}.parquet"
        write_parquet(generate(gen, scenario, production=True), str(out[scenario]))
    return out


def _registry(live_stack: dict[str, str], name: str) -> Registry:
    return Registry(live_stack["mlflow"], name, Path(live_stack["home"]) / "ledger.jsonl")


def _train(ctx: Context, **kw: object):  # type: ignore[no-untyped-def]
    return training_pipeline(config=ctx, allow_dirty=True, **kw)


def test_first_model_reaches_staging_with_its_whole_release_context(
    live_stack: dict[str, str], model_name: str, ctx: Context
) -> None:
    result = _train(ctx)
    assert result.stage == "Staging" and result.verdict.passed
    assert result.verdict.baseline.startswith("none: first model")  # visible: absolute minimums only
    assert {c.check for c in result.verdict.checks} == {"min_auc", "max_log_loss"}
    reg = _registry(live_stack, model_name)
    staging = reg.one("Staging")
    assert staging is not None and staging.version == result.version
    client = MlflowClient(live_stack["mlflow"])
    run = client.get_run(result.run_id)
    tags = run.data.tags
    assert tags["tollgate.data_md5"] == result.data.md5 and tags["tollgate.data_dvc_tracked"] == "true"
    assert len(tags["tollgate.git_sha"]) == 40 and len(tags["tollgate.config_digest"]) == 64
    assert tags["tollgate.pkg.scikit-learn"]
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name.startswith("snapshot.parquet@")
    assert run.inputs.dataset_inputs[0].dataset.digest == result.data.md5[:8]
    steps = ("validate", "split", "train", "score", "evaluate", "profile", "log_run", "register", "gate", "promote")
    steps += ("pin_data", "score_baseline", "record_verdict")
    assert all(result.timings[s] >= 0 for s in steps) and result.timings["train"] >= result.timings["fit"]
    assert {f"timing_{s}_s": result.timings[s] for s in steps}.items() <= run.data.metrics.items()
    assert run.data.metrics["holdout_auc"] == pytest.approx(result.overall["auc"])
    assert "seg.tier.gold.auc" in run.data.metrics
    for name in RELEASE_FILES:
        assert load_release_file(live_stack["mlflow"], result.run_id, name)
    cfg = load_release_file(live_stack["mlflow"], result.run_id, "config.json")
    assert cfg["gates"]["minimums"] == bundled_config().gates.minimums and cfg["rollout"]["approvers"]
    profile = load_release_file(live_stack["mlflow"], result.run_id, "reference_profile.json")
    assert set(profile["features"]) == set(bundled_config().features.all) and profile["prediction"]["edges"]
    card = load_release_file(live_stack["mlflow"], result.run_id, "model_card.md")
    assert "Intended use" in card and "tier=gold" in card and result.data.md5 in card
    version_tags = reg.get(result.version).tags
    assert version_tags["tollgate.gate.passed"] == "true"
    entries = [e for e in ledger.read(Path(live_stack["home"]) / "ledger.jsonl", model_name)]
    assert [(e.from_stage, e.to_stage) for e in entries] == [("-", "None"), ("None", "None"), ("None", "Staging")]
    assert entries[-1].evidence_run_id == result.run_id and entries[-1].flow_run_id
    # Provenance: every file of the model and the release context has its sha256 in the (chained) ledger and
    # as a version tag, and the one loader checks them before it deserializes anything.
    registered, verdict = entries[0].digests or {}, entries[1].digests or {}
    assert {"model/MLmodel", "model/model.skops", "release/config.json", "release/reference_sample.parquet"} <= set(
        registered
    )
    assert set(verdict) == {"release/gate_verdict.json"}
    assert json.loads(version_tags["tollgate.sha256.files"]) == registered
    release = load_release(ctx.config, reg, result.version)
    assert release.file("gate_verdict.json")["passed"] and hasattr(release.load_model(), "predict")
    _assert_prefect_artifacts(model_name)


def _assert_prefect_artifacts(model_name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def keys() -> set[str]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=artifact_key("", model_name)))
            )
            return {a.key for a in found if a.key}

    got = asyncio.run(keys())
    assert artifact_key("gate", model_name) in got and artifact_key("model-card", model_name) in got


def test_concept_drift_model_is_rejected_by_the_gold_segment_and_changes_nothing(
    live_stack: dict[str, str], model_name: str, ctx: Context, periods: dict[str, Path]
) -> None:
    first = _train(ctx)
    reg = _registry(live_stack, model_name)
    reg.transition(first.version, "Production", "test: make v1 the champion", first.run_id)
    before = {s: [v.version for v in reg.in_stage(s)] for s in ("Production", "Staging")}
    with pytest.raises(GateRejected) as err:
        _train(ctx, data=str(periods["concept_drift"]))
    verdict = err.value.verdict
    assert [c.scope for c in verdict.failures] == ["tier=gold"]  # better overall, clearly worse on gold
    overall = next(c for c in verdict.checks if c.scope == "overall" and c.check == "auc_non_inferiority")
    assert overall.status == "pass" and overall.diff is not None and overall.diff > 0
    assert verdict.baseline == f"Production v{first.version}"
    assert {s: [v.version for v in reg.in_stage(s)] for s in ("Production", "Staging")} == before
    rejected = reg.get(err.value.version or "")
    assert rejected.stage == "None" and rejected.tags["tollgate.gate.failures"] == "tier=gold auc_segment_harm"
    last = ledger.read(Path(live_stack["home"]) / "ledger.jsonl", model_name)[-1]
    assert last.version == err.value.version and "gate rejected: tier=gold" in last.reason
    stored = load_release_file(live_stack["mlflow"], rejected.run_id, "gate_verdict.json")
    assert stored["passed"] is False


def test_a_better_model_passes_and_archives_the_staging_it_replaces(
    live_stack: dict[str, str], model_name: str, ctx: Context
) -> None:
    weak = _train(ctx.with_config(model={"hyperparameters": {"max_iter": 3}}))  # a deliberately weak first model
    strong = _train(ctx)
    assert strong.stage == "Staging" and strong.verdict.baseline == f"Staging v{weak.version} (no Production yet)"
    overall = next(c for c in strong.verdict.checks if c.check == "auc_non_inferiority")
    assert overall.ci_low is not None and overall.ci_low > 0  # clearly better, not just non-inferior
    reg = _registry(live_stack, model_name)
    assert reg.get(weak.version).stage == "Archived" and reg.get(strong.version).stage == "Staging"
    entries = ledger.read(Path(live_stack["home"]) / "ledger.jsonl", model_name)
    assert (weak.version, "Staging", "Archived") in [(e.version, e.from_stage, e.to_stage) for e in entries]


def _bad(tmp_path: Path, name: str, mutate) -> Path:  # type: ignore[no-untyped-def]
    gen = bundled_config().generation
    assert gen is not None
    frame = generate(gen.model_copy(update={"rows": 800}))
    path = tmp_path / name
    mutate(frame).to_parquet(path, index=False)
    return path


BAD = [
    ("missing column", lambda f: f.drop(columns=["tenure_months"]), "missing columns ['tenure_months']"),
    (
        "nulls over limit",
        lambda f: f.assign(monthly_charges=np.where(f.index % 3 == 0, np.nan, f["monthly_charges"])),
        "'monthly_charges'",
    ),
    ("unseen category", lambda f: f.assign(region=np.where(f.index < 5, "atlantis", f["region"])), "['atlantis']"),
    ("duplicate ids", lambda f: f.assign(customer_id=np.where(f.index < 6, "C0", f["customer_id"])), "'customer_id'"),
    ("non-binary label", lambda f: f.assign(churned=np.where(f.index == 0, 3, f["churned"])), "'churned'"),
]


@pytest.mark.parametrize(("case", "mutate", "phrase"), BAD, ids=[b[0] for b in BAD])
def test_invalid_data_stops_the_flow_before_training_and_registers_nothing(
    live_stack: dict[str, str],
    model_name: str,
    ctx: Context,
    tmp_path: Path,
    case: str,
    mutate,
    phrase: str,  # type: ignore[no-untyped-def]
) -> None:
    reg = _registry(live_stack, model_name)
    ledger_before = len(ledger.read(Path(live_stack["home"]) / "ledger.jsonl"))
    with pytest.raises(ValidationFailed) as err:
        _train(ctx, data=str(_bad(tmp_path, f"{case.replace(' ', '_')}.parquet", mutate)))
    assert phrase in str(err.value)
    assert reg.all_versions() == []
    assert len(ledger.read(Path(live_stack["home"]) / "ledger.jsonl")) == ledger_before
    runs = MlflowClient(live_stack["mlflow"]).search_runs(
        experiment_ids=[e.experiment_id for e in MlflowClient(live_stack["mlflow"]).search_experiments()],
        filter_string=f"tags.`tollgate.data_path` LIKE '%{case.replace(' ', '_')}%'",
    )
    assert runs == []  # not even a training run was logged


def test_cli_train_reports_a_rejection_with_exit_1(
    live_stack: dict[str, str],
    model_name: str,
    periods: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tollgate.app.cli import main

    monkeypatch.setenv("TOLLGATE__PROJECT__REGISTERED_MODEL", model_name)  # a user's CLI run reads its environment

    assert main(["train", "--allow-dirty"]) == 0
    out = capsys.readouterr().out
    assert "-> Staging" in out and "first model" in out and "% of wall" in out
    assert main(["train", "--allow-dirty", "--data", str(periods["concept_drift"])]) == 1
    captured = capsys.readouterr()
    assert "FAIL tier=gold" in captured.out and "REJECTED by the gate" in captured.err
    assert main(["history", "--json"]) == 0
    assert f'"model": "{model_name}"' in capsys.readouterr().out


def test_dvc_stages_rebuild_the_metrics_the_flow_logged(
    live_stack: dict[str, str], ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc repro` runs `python -m tollgate.app.stages ...`; here the same entry points, in a scratch project dir."""
    import json

    from tollgate.app import stages

    result = _train(ctx)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "snapshot.parquet").symlink_to(ROOT / "data" / "snapshot.parquet")
    monkeypatch.chdir(tmp_path)
    assert stages.main(["train"]) == 0 and stages.main(["evaluate"]) == 0
    rebuilt = json.loads((tmp_path / "data" / "build" / "metrics.json").read_text())
    assert rebuilt["overall"]["auc"] == result.overall["auc"]
    assert rebuilt["overall"]["log_loss"] == result.overall["log_loss"]


def test_training_twice_gives_identical_metrics() -> None:
    from tasks.evaluation import evaluate_frame, predict_scores
    from tasks.training import build_pipeline, fit_pipeline, split_frame
    from tollgate.objective import Objective

    cfg = bundled_config()
    objective = Objective.from_config(cfg)
    frame = pd.read_parquet(ROOT / "data" / "snapshot.parquet")
    runs = []
    for _ in range(2):
        train, holdout = split_frame(frame, cfg.dataset, cfg.split, cfg.model.seed)
        pipeline = build_pipeline(cfg.features, cfg.model)
        model = fit_pipeline(pipeline, train, cfg.features, cfg.dataset.target, objective, cfg.model.threads)
        outputs = predict_scores(model, holdout, cfg.features.all, objective)
        runs.append(evaluate_frame(holdout, outputs, cfg.dataset, objective))
    assert runs[0] == runs[1]


def _task_project(tmp_path: Path, task: str, model_name: str) -> Context:
    """A project of its own in tmp_path (configs/pipeline.yaml + data/t.parquet, ~400 rows) for a multiclass
    (3 synthetic classes) or regression (sklearn's diabetes) model, with a category, a bool and a numeric-binned
    segment; run on the session's servers and state folder (tests/conftest.py's environment)."""
    import yaml
    from sklearn.datasets import load_diabetes, make_classification

    rng = np.random.default_rng(1)
    if task == "multiclass":
        x, y = make_classification(
            n_samples=420,
            n_features=5,
            n_informative=4,
            n_redundant=0,
            n_classes=3,
            n_clusters_per_class=1,
            class_sep=0.8,
            random_state=0,
        )
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)]).assign(y=y)
        target: dict[str, object] = {"type": "label", "values": [0, 1, 2]}
        limits = {"minimums": {"auc_ovr": 0.6}, "maximums": {"log_loss": 5.0}, "non_inferiority_margin": 0.01}
        live = {"live_degraded_at": 0.7, "live_severe_at": 0.6}
    else:
        raw = load_diabetes(as_frame=True).frame
        frame = raw[["age", "bmi", "bp", "s1", "s5"]].assign(y=raw["target"])
        frame.columns = [*(f"f{i}" for i in range(5)), "y"]
        target = {"type": "float"}
        limits = {"minimums": {"r2": -1.0}, "maximums": {"rmse": 1000.0}, "non_inferiority_margin": 1.0}
        live = {"live_degraded_at": 70.0, "live_severe_at": 90.0}
    n = len(frame)
    frame = frame.assign(
        id=[f"r{i}" for i in range(n)],
        ts=pd.Timestamp("2026-01-01") + pd.to_timedelta(np.arange(n), unit="h"),
        cellar=rng.choice(["north", "south"], n),
        organic=rng.random(n) < 0.5,
    )
    (tmp_path / "data").mkdir()
    frame.to_parquet(tmp_path / "data" / "t.parquet", index=False)
    body = bundled_config().model_dump(mode="json", exclude={"servers"})
    body["project"]["registered_model"] = model_name
    body["dataset"] = {
        "path": "data/t.parquet",
        "id": "id",
        "timestamp": "ts",
        "target": "y",
        "segments": ["cellar", "organic", "f0"],
        "segment_bins": {"f0": [0.0]},
        "row_count": {"min": 100},
        "columns": {
            **{f"f{i}": {"type": "float"} for i in range(5)},
            "id": {"type": "string", "unique": True},
            "ts": {"type": "timestamp"},
            "cellar": {"type": "category", "categories": ["north", "south"]},
            "organic": {"type": "bool"},
            "y": target,
        },
    }
    body["features"] = {"numeric": [f"f{i}" for i in range(5)], "boolean": ["organic"], "categorical": ["cellar"]}
    body["model"] = {
        "task": task,
        "kind": "hist_gradient_boosting",
        "seed": 5,
        "hyperparameters": {"max_iter": 40, "learning_rate": 0.1, "min_samples_leaf": 10},
    }
    body["gates"].update(limits, min_segment_size=30, bootstrap_samples=200)
    body["monitoring"].update(live)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "pipeline.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return make_context(tmp_path / "configs" / "pipeline.yaml", "dev")


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_task_model_staged_then_worse_rejected(
    live_stack: dict[str, str], model_name: str, tmp_path: Path, task: str
) -> None:
    """A multiclass or regression model reaches Staging with its metrics under holdout_<metric> and
    seg.<col>.<value>.<metric>; a clearly worse second model is rejected on the primary metric."""
    ctx = _task_project(tmp_path, task, model_name)
    primary = "auc_ovr" if task == "multiclass" else "rmse"
    first = _train(ctx)
    assert first.stage == "Staging" and first.verdict.passed, first.verdict.summary()
    assert {c.check for c in first.verdict.checks} == set(
        ["min_auc_ovr", "max_log_loss"] if task == "multiclass" else ["min_r2", "max_rmse"]
    )
    reg = _registry(live_stack, model_name)
    staging = reg.one("Staging")
    assert staging is not None and staging.version == first.version
    metrics = MlflowClient(live_stack["mlflow"]).get_run(first.run_id).data.metrics
    assert metrics[f"holdout_{primary}"] == pytest.approx(first.overall[primary])
    assert "holdout_auc" not in metrics and "seg.organic.True." + primary in metrics
    assert any(k.startswith("seg.f0.") and k.endswith(f".{primary}") for k in metrics)  # the binned segment
    if task == "multiclass":
        assert "holdout_recall.2" in metrics
    profile = load_release_file(live_stack["mlflow"], first.run_id, "reference_profile.json")
    assert profile["prediction"]["kind"] == ("categorical" if task == "multiclass" else "numeric")
    card = load_release_file(live_stack["mlflow"], first.run_id, "model_card.md")
    assert ("AUC" in card) == (task == "multiclass")
    smoke = load_release_file(live_stack["mlflow"], first.run_id, "smoke_records.json")
    assert set(smoke[0]) == {"id", "f0", "f1", "f2", "f3", "f4", "organic", "cellar", "ts"}  # no target
    # a stump per class / one shallow tree: clearly worse on the primary metric
    weak = ctx.with_config(model={"hyperparameters": {"max_iter": 1, "max_leaf_nodes": 2, "learning_rate": 0.1}})
    with pytest.raises(GateRejected) as err:
        _train(weak)
    verdict = err.value.verdict
    assert verdict.baseline == f"Staging v{first.version} (no Production yet)"
    overall = next(c for c in verdict.checks if c.scope == "overall" and c.check == f"{primary}_non_inferiority")
    assert overall.status == "fail" and overall.diff is not None and overall.diff < 0
    assert ("RMSE " if task == "regression" else "AUC (one-vs-rest) ") in overall.reason
    assert reg.get(err.value.version or "").stage == "None" and reg.one("Staging").version == first.version  # type: ignore[union-attr]


def test_env_isolation() -> None:
    assert os.environ["TOLLGATE_HOME"] != str(ROOT / ".tollgate")
