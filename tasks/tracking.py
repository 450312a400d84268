"""Tracking stage: log a training run with its full release context to MLflow, register it, and read it back.

The release context (resolved config, expectation suite, drift reference profile, evaluation report, data
version, model card, gate verdict) is stored as artifacts of the version's run under `release/`, so serving,
monitoring and rollback read what the version was trained with, never the working tree's config.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.entities import Metric
from mlflow.types import ColSpec, Schema
from mlflow.types.utils import _infer_schema
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.common import tollgate_task
from tasks.data import DataVersion
from tasks.estimation import ESTIMATOR_FILE, estimator_metrics
from tasks.gates import GateVerdict
from tasks.model_card import model_card
from tollgate.compiled import Compiled
from tollgate.config import TollgateConfig
from tollgate.context import Context
from tollgate.keys import key_part, segment_key
from tollgate.objective import Objective
from tollgate.provenance import REGISTERED_REASON, SKOPS_TRUSTED_TYPES, VERDICT_REASON, digest_tags, digest_tree
from tollgate.release import COMPILED_MODEL, RELEASE_DIR, load_release, load_release_file

REQUIREMENT_PACKAGES = ("scikit-learn", "skops", "pandas", "numpy", "scipy")


@dataclass(frozen=True)
class RunRecord:
    """Everything a training run logs: data version, frames, fitted model and what was computed from them."""

    data: DataVersion
    frame: pd.DataFrame
    holdout: pd.DataFrame
    model: Any
    evaluation: dict[str, Any]
    profile: dict[str, Any]
    suite: dict[str, Any]
    timings: dict[str, float]
    compiled: Compiled | None = None  # the ONNX form and its parity (tasks/compiling.py); None: not attempted
    estimator: dict[str, Any] | None = None  # the performance estimator (tasks/estimation.py); None: not fitted


@dataclass(frozen=True)
class LoggedRun:
    """A training run and the URI of the model logged in it."""

    run_id: str
    model_uri: str
    digests: dict[str, str]  # "release/<file>" -> sha256 of the release context as written


@dataclass(frozen=True)
class RegisteredRun:
    """A logged training run and the model version registered from it."""

    run_id: str
    version: str
    model_uri: str
    experiment_id: str


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in REQUIREMENT_PACKAGES]


def package_versions() -> dict[str, str]:
    """Versions of the packages a model's behaviour depends on (lineage tags)."""
    from importlib.metadata import version

    return {
        p: version(p) for p in ("scikit-learn", "pandas", "numpy", "mlflow", "prefect", "great-expectations", "dvc")
    }


def _flat(prefix: str, body: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(body, dict):
        for key, value in body.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), value, out)
    else:
        out[prefix] = body
    return out


def segment_metrics(evaluation: dict[str, Any], metric: str | None = None) -> dict[str, float]:
    """{'seg.tier.gold.auc': 0.83, ...} for `metric` (default every metric) across every segment value (keys
    made safe, tollgate.keys)."""
    return {
        segment_key(col, value, name): v
        for col, per in evaluation["segments"].items()
        for value, m in per.items()
        for name, v in m.items()
        if metric is None or name == metric
    }


def segment_key_map(evaluation: dict[str, Any]) -> dict[str, dict[str, str]]:
    """{'tier': {'gold': 'gold'}, 'region': {'São Paulo': 'S_o_Paulo-1a2b3c4d'}}: each segment value's key part."""
    return {col: {str(v): key_part(v) for v in per} for col, per in evaluation["segments"].items()}


def _plain(value: Any) -> Any:
    """A JSON-ready value: numpy scalars as Python ones, timestamps as ISO text."""
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value.item() if hasattr(value, "item") else value


def request_records(frame: pd.DataFrame, cfg: TollgateConfig, n: int) -> list[dict[str, Any]]:
    """The first `n` rows as gateway request records: entity id and features first, then the segment and
    timestamp columns the frame has (schema columns the gateway logs); NaN as null, plain Python types."""
    ds = cfg.dataset
    cols = [ds.id, *cfg.features.all]
    cols += [c for c in dict.fromkeys([*ds.segments, ds.timestamp]) if c in frame.columns and c not in cols]
    head = frame[cols].head(n)
    rows = head.astype(object).where(head.notna(), None)
    return [{k: _plain(v) for k, v in row.items()} for row in rows.to_dict("records")]


def artifact_key(kind: str, model: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for one kind of artifact of a model."""
    return "".join(ch if ch.isalnum() else "-" for ch in f"{kind}-{model}".lower())


def scoring_path(compiled: Compiled | None) -> str:
    """onnx when the compiled model passed parity, else sklearn (the version's `tollgate.scoring` tag)."""
    return "onnx" if compiled is not None and compiled.ok else "sklearn"


def _write_json(folder: Path, name: str, body: Any) -> None:
    (folder / name).write_text(json.dumps(body, indent=2, sort_keys=True, default=str))


def log_run(ctx: Context, record: RunRecord, flow_run_id: str | None) -> LoggedRun:
    """Log params, metrics, the dataset input, lineage tags, the model and the release context; returns the run id."""
    import mlflow.sklearn
    import skops.io as sio
    from mlflow.models import infer_signature

    data, frame, holdout, model = record.data, record.frame, record.holdout, record.model
    evaluation, profile, suite, timings = record.evaluation, record.profile, record.suite, record.timings

    cfg = ctx.config
    mlflow.set_tracking_uri(cfg.servers.mlflow_url)
    experiment = mlflow.set_experiment(cfg.project.name)
    features = cfg.features.all
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=f"train-{data.md5[:8]}") as run:
        mlflow.log_params(
            {
                k: v
                for k, v in _flat(
                    "",
                    {"model": cfg.model.model_dump(), "split": cfg.split.model_dump(), "gates": cfg.gates.model_dump()},
                    {},
                ).items()
            }
        )
        mlflow.log_param("features", ",".join(features))
        # The model before the metrics: MLflow's log_model links every metric already logged in the run to the
        # model, one REST call per metric (1.6 s at ~100 metrics, more with many segments).
        sample = holdout[features].head(50)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(sample, Objective.from_config(cfg).outputs(model, sample)),
            pip_requirements=_requirements(),
            serialization_format="skops",
            skops_trusted_types=skops_types(sio.get_untrusted_types(data=sio.dumps(model)), cfg.model.kind),
        )
        overall = {f"holdout_{k}": v for k, v in evaluation["overall"].items()}
        compiled = record.compiled
        parity = {} if compiled is None else {"onnx_parity_max_abs_diff": compiled.report.get("max_abs_diff")}
        mlflow.log_metrics(
            {
                **overall,
                **segment_metrics(evaluation),
                **timing_metrics(timings),
                **{k: v for k, v in parity.items() if v is not None},
                **estimator_metrics(record.estimator),
            }
        )
        dataset = training_dataset(frame, data, cfg.dataset.target)
        mlflow.log_input(dataset, context="training")
        mlflow.set_tags(
            {
                "tollgate.git_sha": str(data.git_sha),
                "tollgate.git_dirty": str(data.git_dirty).lower(),
                "tollgate.data_md5": data.md5,
                "tollgate.data_path": data.path,
                "tollgate.data_dvc_tracked": str(data.matches_dvc).lower(),
                "tollgate.config_digest": cfg.digest(),
                "tollgate.flow_run_id": str(flow_run_id),
                "tollgate.scoring": scoring_path(compiled),
                **{f"tollgate.pkg.{k}": v for k, v in package_versions().items()},
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            _write_json(folder, "config.json", cfg.model_dump(mode="json", exclude={"servers"}))
            _write_json(folder, "expectation_suite.json", suite)
            _write_json(folder, "reference_profile.json", profile)
            _write_json(folder, "evaluation.json", evaluation)
            _write_json(folder, "segment_keys.json", segment_key_map(evaluation))
            _write_json(folder, "data_version.json", data.to_dict())
            objective = Objective.from_config(cfg)
            if objective.is_classification:  # the fixed encoding the model was trained on: code i is labels[i]
                _write_json(folder, "classes.json", {"task": objective.task, "labels": list(objective.labels)})
            card = model_card(cfg, data, evaluation, compiled=None if compiled is None else compiled.report)
            (folder / "model_card.md").write_text(card)
            _write_json(folder, "smoke_records.json", request_records(holdout, cfg, cfg.serving.smoke_requests))
            # A bounded sample of the training inputs: the reference for Evidently's drift report.
            sample = frame[features].sample(
                min(cfg.monitoring.report_sample_rows, len(frame)), random_state=cfg.model.seed
            )
            sample.to_parquet(folder / "reference_sample.parquet", index=False)
            if record.estimator is not None:
                _write_json(folder, ESTIMATOR_FILE, record.estimator)
            if compiled is not None:
                _write_json(folder, "compiled.json", {**compiled.report, "scoring": scoring_path(compiled)})
                if compiled.onnx is not None:
                    (folder / COMPILED_MODEL).write_bytes(compiled.onnx)
            digests = digest_tree(folder, RELEASE_DIR)
            mlflow.log_artifacts(tmp, RELEASE_DIR)
        return LoggedRun(str(run.info.run_id), str(info.model_uri), digests)


def skops_types(found: list[str], kind: str) -> list[str]:
    """The project's skops allow-list, after checking the fitted pipeline needs nothing outside it (every loader
    uses that list, so a model holding another type could never be served)."""
    foreign = sorted(set(found) - set(SKOPS_TRUSTED_TYPES))
    if foreign:
        raise TypeError(
            f"the fitted {kind} pipeline holds types outside tollgate.provenance.SKOPS_TRUSTED_TYPES: {foreign}"
        )
    return list(SKOPS_TRUSTED_TYPES)


SCHEMA_SAMPLE_ROWS = 10_000


class _TrainingDataset(PandasDataset):
    """MLflow's pandas dataset, with its schema's column types inferred from the first rows and each column's
    `required` flag from one vectorised null scan. MLflow infers both from every cell in Python (25 s per
    million rows here); the frame has passed validation, so its types are the same in every row."""

    @cached_property
    def schema(self) -> Schema | None:
        try:
            head = _infer_schema(self._df.head(SCHEMA_SAMPLE_ROWS))
        except Exception:  # as MLflow's own: a frame whose schema cannot be inferred is logged without one
            return None
        nulls = self._df.isna().any()
        cols = [c for c in head.inputs if isinstance(c, ColSpec)]
        return Schema([ColSpec(c.type, c.name, required=not bool(nulls[c.name])) for c in cols])


def training_dataset(frame: pd.DataFrame, data: DataVersion, target: str) -> PandasDataset:
    """The MLflow dataset input of a training run. Its digest is the data file's md5 that `pin_data_version`
    already computed (MLflow would otherwise hash the frame again, mapping `type` over every cell)."""
    return _TrainingDataset(
        df=frame,
        source=resolve_dataset_source(data.path),
        targets=target,
        name=f"{Path(data.path).name}@{data.md5[:8]}",
        digest=data.md5[:8],
    )


def timing_metrics(timings: dict[str, float]) -> dict[str, float]:
    """MLflow metric names for step timings: `timing_<step>_s`."""
    return {f"timing_{k}_s": float(v) for k, v in timings.items()}


def register(ctx: Context, logged: LoggedRun, flow_run_id: str | None) -> RegisteredRun:
    """Register the run's model as a new version (stage None) and record it in the ledger."""
    mlflow.set_tracking_uri(ctx.config.servers.mlflow_url)
    name = ctx.config.project.registered_model
    run_id = logged.run_id
    with tempfile.TemporaryDirectory() as tmp:  # the model files as the server stores them, before anyone loads
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.model_uri, dst_path=tmp))
        digests = {**digest_tree(model_dir, "model"), **logged.digests}
    mv = mlflow.register_model(logged.model_uri, name, tags={"tollgate.run_id": run_id})
    version = str(mv.version)
    ctx.registry.record(version, "-", "None", REGISTERED_REASON, run_id, flow_run_id=flow_run_id, digests=digests)
    ctx.registry.set_tags(version, digest_tags(digests, "files"))
    run = mlflow.get_run(run_id)
    project, tags = ctx.config.project, run.data.tags
    ctx.registry.set_tags(
        version,
        {
            "tollgate.card.intended_use": project.intended_use or "(not stated in config)",
            "tollgate.card.owner": project.owner,
            "tollgate.card.data_version": f"{tags.get('tollgate.data_path')} md5 {tags.get('tollgate.data_md5')}"
            f" at git {str(tags.get('tollgate.git_sha'))[:12]}",
        },
    )
    return RegisteredRun(
        run_id=run_id, version=version, model_uri=f"models:/{name}/{version}", experiment_id=run.info.experiment_id
    )


class BaselineMismatch(ValueError):
    """The baseline cannot be compared with the challenger (another task or classes, or missing columns)."""


def baseline_scores(ctx: Context, holdout: pd.DataFrame, exclude_version: str) -> tuple[str, str, np.ndarray] | None:
    """The baseline to gate against with its outputs on this holdout (its own feature list and objective): the
    Production version, else the Staging version the challenger would displace, else None (first model).
    BaselineMismatch when its task or classes differ from the challenger's or it needs columns this data lacks."""
    registry = ctx.registry
    prod = registry.one("Production")
    staging = registry.one("Staging")
    if prod is not None:
        base, label = prod, f"Production v{prod.version}"
    elif staging is not None and staging.version != exclude_version:
        base, label = staging, f"Staging v{staging.version} (no Production yet)"
    else:
        return None
    release = load_release(ctx.config, registry, version=base.version)
    theirs, ours = release.objective, Objective.from_config(ctx.config)
    if (theirs.task, theirs.labels) != (ours.task, ours.labels):
        raise BaselineMismatch(
            f"baseline {label} is a {theirs.task} model{_classes(theirs)} and the challenger a {ours.task} "
            f"model{_classes(ours)}: their {ours.primary} cannot be compared. Retire the baseline (archive it) or "
            "register this model under another name (project.registered_model)"
        )
    missing = [c for c in release.features if c not in holdout.columns]
    if missing:
        raise BaselineMismatch(
            f"baseline {label} needs columns {missing} that this dataset lacks: it cannot be compared"
        )
    return label, base.version, theirs.outputs(release.load_model(), holdout[release.features])


def _classes(objective: Objective) -> str:
    return f" of classes {list(objective.labels)}" if objective.labels else ""


def store_verdict(ctx: Context, registered: RegisteredRun, verdict: GateVerdict, flow_run_id: str | None) -> None:
    """Store the verdict as a run artifact, version tags and a Prefect table; a rejection lands in the ledger."""
    cfg = ctx.config
    client = mlflow.MlflowClient(tracking_uri=cfg.servers.mlflow_url)
    registry = ctx.registry
    with tempfile.TemporaryDirectory() as tmp:
        _write_json(Path(tmp), "gate_verdict.json", verdict.to_dict())
        digests = digest_tree(Path(tmp), RELEASE_DIR)
        registry.record(registered.version, "None", "None", VERDICT_REASON, registered.run_id, digests=digests)
        client.log_artifact(registered.run_id, str(Path(tmp) / "gate_verdict.json"), RELEASE_DIR)
    registry.set_tags(registered.version, digest_tags(digests, "gate_verdict"))
    failing = "; ".join(f"{c.scope} {c.check}" for c in verdict.failures)
    registry.set_tags(
        registered.version,
        {
            "tollgate.gate.passed": str(verdict.passed).lower(),
            "tollgate.gate.baseline": verdict.baseline,
            "tollgate.gate.failures": failing or "none",
            "tollgate.gate.not_gated": "; ".join(c.scope for c in verdict.not_gated) or "none",
            "tollgate.gate.headline": verdict.summary().splitlines()[0] + (f" (failing: {failing})" if failing else ""),
        },
    )
    create_table_artifact(
        key=artifact_key("gate", cfg.project.registered_model),
        table=verdict.rows(),
        description=f"Gate verdict for {cfg.project.registered_model} v{registered.version}: "
        f"{'PASSED' if verdict.passed else 'REJECTED'} against {verdict.baseline}",
    )
    if not verdict.passed:
        registry.record(
            registered.version, "None", "None", f"gate rejected: {failing}", registered.run_id, flow_run_id=flow_run_id
        )


def publish_card(ctx: Context, registered: RegisteredRun) -> str:
    """Publish the version's model card (from its run) as a Prefect Markdown artifact; returns the Markdown."""
    cfg = ctx.config
    card = str(load_release_file(cfg.servers.mlflow_url, registered.run_id, "model_card.md"))
    card = card.replace(
        f"# Model card: {cfg.project.registered_model}",
        f"# Model card: {cfg.project.registered_model} v{registered.version}",
        1,
    )
    create_markdown_artifact(
        key=artifact_key("model-card", cfg.project.registered_model),
        markdown=card,
        description=f"{cfg.project.registered_model} v{registered.version}",
    )
    return card


# -- tasks: thin wrappers for the training flow ---------------------------------------------------------------
@tollgate_task  # not retried: a retry after a lost response would create a second run
def log_training_run(ctx: Context, record: RunRecord, flow_run_id: str | None) -> LoggedRun:
    """Log the training run with its release context; returns the run."""
    return log_run(ctx, record, flow_run_id)


@tollgate_task  # not retried: a retry after a lost response would register a second version
def register_version(ctx: Context, logged: LoggedRun, flow_run_id: str | None) -> RegisteredRun:
    """Register the run's model as a new version (stage None), recorded in the ledger."""
    return register(ctx, logged, flow_run_id)


@tollgate_task(idempotent_io=True)
def score_baseline(ctx: Context, holdout: pd.DataFrame, exclude_version: str) -> tuple[str, str, np.ndarray] | None:
    """The gate's baseline (label, version, outputs on this holdout), or None for a first model."""
    return baseline_scores(ctx, holdout, exclude_version)


@tollgate_task
def record_verdict(ctx: Context, registered: RegisteredRun, verdict: GateVerdict, flow_run_id: str | None) -> None:
    """Store the gate verdict with the version (artifact, tags, Prefect table, ledger on rejection)."""
    store_verdict(ctx, registered, verdict, flow_run_id)


@tollgate_task(idempotent_io=True)  # the same metric values logged twice change nothing
def log_timings(ctx: Context, run_id: str, timings: dict[str, float]) -> None:
    """Log the flow's step timings on the training run as `timing_<step>_s` metrics."""
    client = mlflow.MlflowClient(tracking_uri=ctx.config.servers.mlflow_url)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in timing_metrics(timings).items()])


@tollgate_task
def publish_model_card(ctx: Context, registered: RegisteredRun) -> str:
    """Publish the version's model card as a Prefect Markdown artifact; returns the Markdown."""
    return publish_card(ctx, registered)
