"""training_pipeline: validate -> pin data version -> split -> train -> evaluate -> log + register -> gate -> Staging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from tasks.common import StepTimes
from tasks.compiling import compile_model
from tasks.data import DataVersion, pin_data_version
from tasks.estimation import fit_estimator
from tasks.evaluation import evaluate_model, score_holdout
from tasks.gates import GateVerdict, enforce_verdict, gate_challenger
from tasks.pictures import log_version_plots
from tasks.profiling import profile_reference
from tasks.registry import promote_version
from tasks.tracking import (
    RunRecord,
    log_timings,
    log_training_run,
    publish_model_card,
    record_verdict,
    register_version,
    score_baseline,
)
from tasks.training import split_dataset, train_model
from tasks.validation import describe_suite, validate_dataset
from tollgate.context import DEFAULT_CONFIG, Context, as_context
from tollgate.objective import Objective


@dataclass(frozen=True)
class TrainingResult:
    """What training_pipeline produced: the version, its stage and the evidence."""

    version: str
    stage: str
    verdict: GateVerdict
    run_id: str
    data: DataVersion
    overall: dict[str, float]  # the task's holdout metrics (tollgate.objective.METRICS), e.g. auc or rmse
    timings: dict[str, float]  # seconds per step (StepTimes order), plus "fit" and "predict" inside train/score

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "stage": self.stage,
            "run_id": self.run_id,
            "verdict": self.verdict.to_dict(),
            "data": self.data.to_dict(),
            "overall": self.overall,
            "timings": self.timings,
        }


@flow(name="training_pipeline")
def training_pipeline(
    config: str | Context = DEFAULT_CONFIG,
    env: str = "dev",
    data: str | None = None,
    allow_dirty: bool = False,
) -> TrainingResult:
    """Train, register and gate one model version; it reaches Staging only when the gate passes."""
    ctx = as_context(config, env)
    cfg, run_id = ctx.config, str(flow_run.id)
    path = str(ctx.resolve(data or cfg.dataset.path))
    steps = StepTimes()
    # validate
    with steps.step("validate"):
        frame = validate_dataset(path, cfg.dataset, str(ctx.paths.gx_root))
    with steps.step("pin_data"):
        version = pin_data_version(str(ctx.root), path, len(frame), allow_dirty)
    # train
    with steps.step("split"):
        train, holdout = split_dataset(frame, cfg.dataset, cfg.split, cfg.model.seed)
    objective = Objective.from_config(cfg)
    with steps.step("train"):
        trained = train_model(train, cfg.features, cfg.model, cfg.dataset.target, objective)
    # evaluate
    with steps.step("score"):
        scored = score_holdout(trained.model, holdout, cfg.features.all, objective)
    with steps.step("compile"):
        compiled = compile_model(trained.model, holdout, cfg.features, objective, scored.outputs)
    with steps.step("evaluate"):
        evaluation = evaluate_model(holdout, scored.outputs, cfg.dataset, objective)
    with steps.step("estimator"):  # binary: the calibration map that estimates live AUC before labels arrive
        estimator = fit_estimator(holdout, scored.outputs, cfg.dataset, objective)
    with steps.step("profile"):
        profile = profile_reference(frame, holdout, scored.outputs, ctx)
    # log + register
    inner = {"fit": trained.fit_s, "predict": scored.predict_s}
    record = RunRecord(
        version,
        frame,
        holdout,
        trained.model,
        evaluation,
        profile,
        describe_suite(cfg.dataset),
        {**steps, **inner},
        compiled,
        estimator,
    )
    with steps.step("log_run"):
        run = log_training_run(ctx, record, run_id)
    with steps.step("register"):
        registered = register_version(ctx, run, run_id)
        publish_model_card(ctx, registered)
    # gate
    with steps.step("score_baseline"):
        baseline = score_baseline(ctx, holdout, registered.version)
    with steps.step("gate"):
        verdict = gate_challenger(ctx, holdout, scored.outputs, evaluation["overall"], baseline)
    with steps.step("record_verdict"):
        record_verdict(ctx, registered, verdict, run_id)
    with steps.step("plots"):  # a rejected version gets its pictures too: they show why
        log_version_plots(ctx, registered.run_id, registered.version, holdout, scored.outputs, verdict, baseline)
    log_timings(ctx, registered.run_id, {k: v for k, v in steps.items() if k not in record.timings})
    enforce_verdict(verdict, registered.version)
    # promote
    with steps.step("promote"):
        promote_version(
            ctx, registered.version, "Staging", f"gate passed against {verdict.baseline}", registered.run_id, run_id
        )
    log_timings(ctx, registered.run_id, {"promote": steps["promote"]})
    return TrainingResult(
        registered.version, "Staging", verdict, registered.run_id, version, evaluation["overall"], {**steps, **inner}
    )
