"""Typed configuration: configs/pipeline.yaml + an environment overlay + TOLLGATE__* variables.

Loaded once at the start of a command or flow and passed down as typed values. Every error names the
file (or environment variable) that supplied the value, the key path and the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "TOLLGATE__"
SCENARIOS: tuple[str, ...] = ("none", "covariate_drift", "concept_drift", "segment_shift", "faults")
ENVIRONMENTS = ("dev", "staging", "prod")
Fraction = Field(ge=0.0, le=1.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectConfig(_Strict):
    name: str
    registered_model: str = Field(min_length=1)
    owner: str
    intended_use: str = ""
    limitations: str = ""


class ColumnSpec(_Strict):
    type: Literal["string", "int", "float", "bool", "category", "timestamp", "label"]
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    # label columns of classification tasks: the class values as they appear in the data (ints, text or booleans,
    # one type); the model is trained on their codes (tollgate.objective.class_codes) and answers with them.
    values: list[bool | int | str] | None = None
    # binary label columns: the class that counts as positive (score = its probability). Default: 1 or true when
    # the values are 0/1 or booleans, otherwise the last value listed.
    positive: bool | int | str | None = None
    max_null_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    unique: bool = False
    # timestamp columns only: how stored values are read ("auto": datetime dtype or ISO text; "epoch_s"/"epoch_ms":
    # numbers since 1970-01-01 UTC; "year": an integer year, read as 1 January of that year).
    format: Literal["auto", "epoch_s", "epoch_ms", "year"] = "auto"

    @model_validator(mode="after")
    def _coherent(self) -> ColumnSpec:
        if self.type == "category" and not self.categories:
            raise ValueError("a category column needs a non-empty 'categories' list")
        if self.type != "category" and self.categories is not None:
            raise ValueError(f"'categories' is only for category columns, not {self.type}")
        if self.type == "label" and len(set(self.values or [])) < 2:
            raise ValueError("a label column needs 'values': its class values, e.g. [0, 1] (binary) or [0, 1, 2]")
        if self.type == "label" and len(set(self.values or [])) != len(self.values or []):
            raise ValueError("a label column's 'values' must be distinct")
        if self.type != "label" and self.values is not None:
            raise ValueError(f"'values' is only for label columns, not {self.type}")
        if self.type == "label" and len({type(v) for v in self.values or []}) > 1:
            kinds = sorted({type(v).__name__ for v in self.values or []})
            raise ValueError(
                f"a label column's 'values' must be of one type, got {kinds} in {self.values}: quote them all "
                "as text (e.g. '1') or write them all as numbers"
            )
        if self.positive is not None and (self.type != "label" or self.positive not in (self.values or [])):
            raise ValueError(f"'positive' ({self.positive!r}) must be one of the label column's values {self.values}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.format != "auto" and self.type != "timestamp":
            raise ValueError(f"'format' is only for timestamp columns, not {self.type}")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"'min'/'max' are only for int and float columns, not {self.type}")
        return self


class RowCount(_Strict):
    min: int = Field(default=1, ge=1)
    max: int = Field(default=10**9, ge=1)


class DatasetConfig(_Strict):
    path: str
    id: str
    timestamp: str
    target: str
    label_delay_days: float = Field(default=0, ge=0)
    segments: list[str] = []  # zero or more columns; metrics, gates and drift are also computed per value
    # Numeric segment columns: interior bin edges, e.g. {age: [30, 50]} -> segments "< 30", "[30, 50)", ">= 50".
    segment_bins: dict[str, list[float]] = {}
    extra_columns: Literal["forbid", "allow"] = "forbid"
    row_count: RowCount = RowCount()
    # A file of more rows than this is read and validated in chunks of this many rows (Parquet row batches, CSV
    # chunks), each by the same suite, the results merged exactly: validation's memory is bounded by the chunk.
    validate_chunk_rows: int = Field(default=1_000_000, ge=1)
    columns: dict[str, ColumnSpec] = Field(min_length=3)

    @model_validator(mode="after")
    def _roles_exist(self) -> DatasetConfig:
        expected = {"id": ("string", "int"), "timestamp": ("timestamp",), "target": ("label", "int", "float")}
        for role, types in expected.items():
            col = getattr(self, role)
            if col not in self.columns:
                raise ValueError(f"{role} column '{col}' is not in dataset.columns")
            if self.columns[col].type not in types:
                raise ValueError(f"{role} column '{col}' must have type {' or '.join(types)}")
        for seg in self.segments:
            if seg not in self.columns:
                raise ValueError(f"segment column '{seg}' is not in dataset.columns")
            kind = self.columns[seg].type
            if kind in ("int", "float"):
                if seg not in self.segment_bins:
                    raise ValueError(f"numeric segment column '{seg}' needs its bin edges in dataset.segment_bins")
            elif kind not in ("category", "string", "bool"):
                raise ValueError(f"segment column '{seg}' has type {kind}: segments are category/string/bool columns")
            if seg == self.target:
                raise ValueError(f"segment column '{seg}' is the target")
        for col, edges in self.segment_bins.items():
            if col not in self.segments:
                raise ValueError(f"segment_bins: '{col}' is not listed in dataset.segments")
            if self.columns[col].type not in ("int", "float"):
                raise ValueError(f"segment_bins: '{col}' is a {self.columns[col].type} column, bins are for int/float")
            if not edges or sorted(set(edges)) != list(edges):
                raise ValueError(f"segment_bins: '{col}' needs strictly increasing edges, got {edges}")
        return self


class FeaturesConfig(_Strict):
    numeric: list[str] = []
    categorical: list[str] = []
    boolean: list[str] = []
    numeric_imputation: Literal["median", "mean", "zero"] = "median"
    scale_numeric: bool = False

    @property
    def all(self) -> list[str]:
        """Every model input column, in a fixed order."""
        return [*self.numeric, *self.categorical, *self.boolean]


TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")
# Which estimators fit which task: "linear" is LogisticRegression for classification and Ridge for regression.
MODEL_KINDS: dict[str, tuple[str, ...]] = {
    "binary": ("hist_gradient_boosting", "logistic_regression"),
    "multiclass": ("hist_gradient_boosting", "logistic_regression"),
    "regression": ("hist_gradient_boosting", "ridge"),
}


class ModelConfig(_Strict):
    task: Literal["binary", "multiclass", "regression"] = "binary"
    kind: Literal["hist_gradient_boosting", "logistic_regression", "ridge"] = "hist_gradient_boosting"
    seed: int = 42
    decision_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)  # binary only: score >= threshold -> 1
    hyperparameters: dict[str, float | int | str | bool | None] = {}
    # The fit's thread count (OpenMP and BLAS), whatever the machine's core count: a gradient-boosted model's
    # bytes depend on it (its sums are split per thread), so a fixed number is what rebuilds the same model, and
    # the same dvc.lock, on every machine. Raise it for big tables; the model then changes once.
    threads: int = Field(default=1, ge=1, le=256)


class SplitConfig(_Strict):
    method: Literal["time", "random"] = "time"
    holdout_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)


class GatesConfig(_Strict):
    # Absolute floors and ceilings on holdout metrics of the model's task (tollgate.objective.METRICS), e.g.
    # binary {auc: 0.7} / {log_loss: 0.6}; regression {r2: 0.3} / {rmse: 60}.
    minimums: dict[str, float] = {}
    maximums: dict[str, float] = {}
    # In the primary metric's units (auc, auc_ovr or rmse): how much worse the challenger may be than the baseline.
    non_inferiority_margin: float = Field(ge=0.0)
    confidence: float = Field(gt=0.5, lt=1.0)
    bootstrap_samples: int = Field(ge=50, le=100_000)
    min_segment_size: int = Field(ge=1)
    # Per segment: "harm" fails when the whole CI of the challenger's improvement in the primary metric lies below
    # -margin (confidently worse); "non_inferiority" applies the overall rule (CI lower bound >= -margin) to every
    # segment.
    segment_test: Literal["harm", "non_inferiority"] = "harm"


class MonitoringConfig(_Strict):
    drift_window_hours: float = Field(gt=0)
    numeric_method: Literal["psi", "ks"] = "psi"
    psi_threshold: float = Field(gt=0.0)
    ks_pvalue: float = Field(gt=0.0, lt=1.0)
    categorical_threshold: float = Field(gt=0.0, le=1.0)
    drift_share_threshold: float = Field(gt=0.0, le=1.0)
    reference_bins: int = Field(ge=2, le=100)
    report_sample_rows: int = Field(ge=100)
    # Live primary metric (auc, auc_ovr or rmse) over matured labels: worse than live_degraded_at is "degraded"
    # (alert, retrain), worse than live_severe_at is "severe" (automatic rollback). "Worse" follows the metric:
    # lower for auc/auc_ovr, higher for rmse.
    live_degraded_at: float
    live_severe_at: float
    # The same threshold on the primary metric *estimated* from the prediction log before labels arrive (issue 36,
    # drift_check): worse than live_degraded_at for this many consecutive drift windows raises the degraded signal
    # marked "estimated" (alert, guarded retrain trigger). An estimate never rolls back, however far it falls: only
    # realized metrics (labels) do.
    estimated_drop_windows: int = Field(default=3, ge=1)
    min_labelled_rows: int = Field(ge=1)
    retrain_cooldown_hours: float = Field(ge=0)
    max_retrains_per_week: int = Field(ge=0)


class RolloutConfig(_Strict):
    shadow_requests: int = Field(ge=1)
    canary_share: float = Field(gt=0.0, lt=1.0)
    canary_requests: int = Field(ge=1)
    min_agreement: float = Fraction
    max_score_psi: float = Field(gt=0.0)
    max_error_rate: float = Fraction
    max_p99_latency_ms: float = Field(gt=0)
    approvers: list[str] = Field(min_length=1)
    approval_timeout_s: float = Field(gt=0)
    auto_approve: bool = False
    # Where `auto_approve` may act: the environments (`--env`) whose deploys may promote with nobody asked. It is
    # read from the deploying environment's config, never from a release; `prod` can never be listed.
    auto_approve_envs: list[str] = Field(default_factory=lambda: ["dev"])
    # Regression shadow agreement: two predicted values agree when they differ by at most this many standard
    # deviations of the champion's values in the compared window (a scale-free tolerance).
    regression_tolerance: float = Field(default=0.25, gt=0)
    # How long the gateway keeps a shadow/canary challenger without hearing from the rollout controller; when
    # the lease lapses (the deploy process died) it goes back to champion-only on its own.
    lease_s: float = Field(default=60, gt=0)

    @field_validator("auto_approve_envs")
    @classmethod
    def _never_prod(cls, envs: list[str]) -> list[str]:
        if "prod" in envs:
            raise ValueError("auto-approval is never allowed in prod: remove 'prod' from rollout.auto_approve_envs")
        return envs


class ServingConfig(_Strict):
    max_batch_size: int = Field(default=512, ge=1, le=100_000)
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)  # a larger /predict body gets 413 naming this
    max_batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    log_fsync: bool = True  # fsync each batch before answering (group commit)
    log_rotate_rows: int = Field(default=50_000, ge=100)
    # Where the prediction log's sealed Parquet parts go (tollgate/predlog.py): None keeps them in the state folder;
    # s3://bucket/prefix ships each one to <prefix>/<model>/ once written (servers.s3_endpoint_url for an
    # S3-compatible store; credentials from AWS_* in the environment, never here). The live segment stays local.
    log_uri: str | None = None
    admin_token_env: str = "TOLLGATE_ADMIN_TOKEN"
    smoke_requests: int = Field(default=20, ge=1)
    reload_timeout_s: float = Field(default=60, gt=0)
    rollout_max_wait_s: float = Field(default=600, gt=0)
    rollout_poll_s: float = Field(default=1.0, gt=0)  # how often a rollout phase checks the traffic it has seen
    # The gateway's self-protection (serving/connections.py, serving/http.py). A connection whose request headers
    # are not complete this long after it opened (or after its previous answer) is closed, with a 408 when part of
    # a request came: a total deadline, so a client trickling a byte a second is closed on time too.
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    # A request head (request line + headers) larger than this gets a 431 and the connection is closed: httptools
    # has no limit of its own. The gateway's clients send well under 1 KiB; nginx allows 32 KiB, Node 16 KiB.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    # A request body not complete this long after its headers gets a 408 and the connection is closed. 20 MiB
    # (max_body_bytes) at 1 MB/s fits in it; a client slower than that is not one this gateway serves.
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # Open connections at most; one over it is answered at once with 503 + Retry-After and closed. The gateway
    # raises its RLIMIT_NOFILE soft limit to the hard one at start, so this cap, not the descriptor limit, is
    # what bites (it is lowered, with a warning, where the hard limit leaves no room for it). 10,000 on a machine
    # whose hard limit is 20,000: 5,000 idle connections and 5,000 for normal clients fit under it, and half the
    # descriptors stay for the log, the model, registry clients and the instant each refused connection holds.
    max_connections: int = Field(default=10_000, ge=1)
    # Longest string (entity id, category, timestamp, any field name or string value) of a /predict record; a
    # longer one is a 422 naming the field, before anything is scored or logged.
    max_string_length: int = Field(default=256, ge=1)
    # Score with the ONNX form of a release when it passed parity at registration (tollgate/compiled.py); off:
    # the sklearn pipeline always (the gateway, the shadow scorer and batch inference alike).
    compiled_scoring: bool = True
    # Serving processes behind servers.gateway_port (`tollgate serve --supervise`, what `tollgate up` runs): each
    # accepts on the one port, writes its own prediction-log segments and is restarted on its own; admin changes
    # reach every replica before they are answered (serving/replicas.py). More than 1 needs the supervisor.
    replicas: int = Field(default=1, ge=1, le=64)
    # Replica i's own port (its /metrics, and where its siblings reach it) is this + i; 0: one the OS picks,
    # listed by /admin/state and `tollgate status`
    replica_base_port: int = Field(default=0, ge=0, le=65535)

    @field_validator("log_uri")
    @classmethod
    def _an_s3_uri(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if value is None:
            return value
        url = urlsplit(value)
        if url.scheme != "s3" or not url.netloc or url.query:
            raise ValueError(
                f"{value!r}: use s3://bucket/prefix (the endpoint of an S3-compatible store goes in "
                "servers.s3_endpoint_url)"
            )
        if url.password is not None or "@" in url.netloc:
            raise ValueError("holds a credential: give it in the AWS_* environment variables, never in a config file")
        return value.rstrip("/")


class BatchConfig(_Strict):
    """batch_inference (`tollgate predict`, the nightly deployment): what the scheduled run scores and where it
    writes, and the bounds every run keeps."""

    input: str = "data/snapshot.parquet"  # the scheduled run's table (.parquet or .csv), relative to the project
    output: str = "data/build/batch"  # the scheduled run writes <output>/<UTC date of the run>
    chunk_rows: int = Field(default=250_000, ge=1)  # rows read, checked and scored at a time (bounds memory)
    max_reject_share: float = Field(default=0.01, ge=0, le=1)  # a chunk with more rows failing the rules fails the run


DASK_ADDRESS = re.compile(r"local:[1-9][0-9]*|(tcp|tls)://[^\s/:]+:[0-9]+")


class ComputeConfig(_Strict):
    """Where the steps over the prediction log's parts run (drift_check's statistics, backfill's label join) and
    where batch_inference scores a Parquet table's chunks: in this process, or fanned out over Dask workers by
    prefect-dask's DaskTaskRunner. The results are the same either way: partial counts and joins merge exactly,
    and a batch run's OUTPUT folder holds the same bytes."""

    # "": in this process; "local:N": a Dask LocalCluster of N worker processes started for the run and stopped
    # after it; "tcp://host:port": an existing Dask scheduler (its workers must run this project's code)
    dask_address: str = ""
    chunk_rows: int = Field(default=250_000, ge=1_000)  # rows of one log part in memory at a time (bounds memory)
    # log parts (or batch chunks) one Dask task reads: each task run costs orchestration (Prefect records it), and
    # a batch task loads the release once, so a task takes a few
    parts_per_task: int = Field(default=4, ge=1)

    @field_validator("dask_address")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip()
        if value and not DASK_ADDRESS.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a Dask address: use '' (in process), 'local:N' (N local worker processes) "
                "or 'tcp://host:port' (an existing scheduler)"
            )
        return value


class AlertsConfig(_Strict):
    webhook_url: str | None = None
    # Delivery is tried after the action it reports: each attempt waits at most timeout_s; a failure is recorded.
    timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    retry_delay_s: float = Field(default=2.0, ge=0)


class GenerationConfig(_Strict):
    seed: int
    rows: int = Field(ge=100)
    period_rows: int = Field(ge=100)
    start: str
    days: int = Field(ge=1)


class CIConfig(_Strict):
    # The one repository ci_pipeline clones and builds: a local path (relative to the project root) or a remote
    # as git names it (URL or host:path), compared exactly. None: the project root, the repository the worker's
    # own code comes from. A run or push event naming another repository is refused before anything is cloned.
    repository: str | None = None


class ServersConfig(_Strict):
    host: str = "127.0.0.1"
    prefect_port: int = Field(default=4200, ge=1, le=65535)
    mlflow_port: int = Field(default=5000, ge=1, le=65535)
    gateway_port: int = Field(default=8000, ge=1, le=65535)
    worker_health_port: int = Field(default=8090, ge=1, le=65535)
    work_pool: str = "tollgate-process"
    # Basic auth on the local Prefect and MLflow servers (credentials generated on first `up` into 0600 files
    # under the state folder). Off only for a throw-away stack; `up` warns when it is off on a non-loopback host.
    auth: bool = True
    startup_timeout_s: float = Field(default=120, gt=0)
    # Remote servers (prod): when set, clients use these instead of the local stack's URLs.
    prefect_api_url: str | None = None
    mlflow_tracking_uri: str | None = None
    # Where the servers `up` starts keep their state. backend sqlite: files under the state folder. postgres: Prefect
    # and MLflow on the PostgreSQL server at postgres_url (postgresql://user@host:port, no password: libpq's and
    # asyncpg's PGPASSWORD or ~/.pgpass give it), in databases <postgres_db_prefix>_prefect and _mlflow, which `up`
    # creates when missing.
    backend: Literal["sqlite", "postgres"] = "sqlite"
    postgres_url: str | None = None
    postgres_db_prefix: str = Field(default="tollgate", pattern=r"^[a-z][a-z0-9_]{0,40}$")
    # MLflow's artifact store (models, reports): the state folder by default, or s3://bucket/prefix. Clients reach
    # it through the MLflow server; the server's AWS_* credentials come from the environment, never from here.
    artifacts_uri: str | None = None
    s3_endpoint_url: str | None = None  # an S3-compatible store (MinIO, moto): its endpoint URL

    @field_validator("postgres_url")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if value is None:
            return value
        url = urlsplit(value)
        if url.scheme != "postgresql" or not url.hostname or url.path not in ("", "/"):
            raise ValueError(f"{value!r}: use postgresql://user@host:port (no database: each server gets its own)")
        if url.password is not None:
            raise ValueError("holds a password: give it in PGPASSWORD or ~/.pgpass, never in a config file")
        return value.rstrip("/")

    @field_validator("artifacts_uri", "s3_endpoint_url")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if value is not None and urlsplit(value).password is not None:
            raise ValueError("holds a credential: give it in the AWS_* environment variables, never in a config file")
        return value

    @model_validator(mode="after")
    def _postgres_named(self) -> ServersConfig:
        if self.backend == "postgres" and not self.postgres_url:
            raise ValueError("servers.backend is postgres but servers.postgres_url is not set")
        return self

    def database_url(self, server: Literal["prefect", "mlflow"]) -> str | None:
        """The database URL of a local server on the postgres backend (asyncpg for Prefect, psycopg2 for MLflow);
        None on sqlite (each server's file under the state folder)."""
        if self.backend != "postgres" or not self.postgres_url:
            return None
        driver = "postgresql+asyncpg" if server == "prefect" else "postgresql"
        return f"{driver}{self.postgres_url.removeprefix('postgresql')}/{self.postgres_db_prefix}_{server}"

    @property
    def prefect_url(self) -> str:
        """The Prefect API URL clients use."""
        return self.prefect_api_url or f"http://{self.host}:{self.prefect_port}/api"

    @property
    def prefect_ui_url(self) -> str:
        """The Prefect UI URL."""
        return self.prefect_url.removesuffix("/api")

    @property
    def mlflow_url(self) -> str:
        """The MLflow tracking URI clients use."""
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def gateway_url(self) -> str:
        """The prediction gateway's base URL."""
        return f"http://{self.host}:{self.gateway_port}"


# Documented defaults (README "Defaults") for the sections a newcomer should not have to write: a config that
# names project, dataset, features and model runs. Per task type where the metric differs; a regression's margin
# and live thresholds are in the target's units, so they have no default (`tollgate config init` derives them from
# the table). Keys the config gives win, key by key.
COMMON_DEFAULTS: dict[str, dict[str, Any]] = {
    "gates": {"confidence": 0.95, "bootstrap_samples": 300, "min_segment_size": 150, "segment_test": "harm"},
    "monitoring": {
        "drift_window_hours": 24,
        "numeric_method": "psi",
        "psi_threshold": 0.2,
        "ks_pvalue": 0.01,
        "categorical_threshold": 0.1,
        "drift_share_threshold": 0.2,
        "reference_bins": 10,
        "report_sample_rows": 5000,
        "min_labelled_rows": 200,
        "retrain_cooldown_hours": 24,
        "max_retrains_per_week": 2,
    },
    "rollout": {
        "shadow_requests": 200,
        "canary_share": 0.2,
        "canary_requests": 200,
        "min_agreement": 0.8,
        "max_score_psi": 0.25,
        "max_error_rate": 0.01,
        "max_p99_latency_ms": 250,
        "approval_timeout_s": 3600,
    },
}
TASK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    # the primary metric is AUC (binary) / macro one-vs-rest AUC (multiclass): 0.5 is chance
    "binary": {
        "gates": {"non_inferiority_margin": 0.01},
        "monitoring": {"live_degraded_at": 0.65, "live_severe_at": 0.55},
    },
    "multiclass": {
        "gates": {"non_inferiority_margin": 0.01},
        "monitoring": {"live_degraded_at": 0.65, "live_severe_at": 0.55},
    },
    "regression": {},
}


UNITS_OF_THE_TARGET = ("gates.non_inferiority_margin", "monitoring.live_degraded_at", "monitoring.live_severe_at")


def section_defaults(task: str) -> dict[str, dict[str, Any]]:
    """The default gates, monitoring and rollout settings of a task type (approvers: the OS user)."""
    import getpass

    out = {section: dict(values) for section, values in COMMON_DEFAULTS.items()}
    for section, values in TASK_DEFAULTS.get(task, {}).items():
        out[section].update(values)
    out["rollout"]["approvers"] = [getpass.getuser()]
    return out


class TollgateConfig(_Strict):
    project: ProjectConfig
    dataset: DatasetConfig
    features: FeaturesConfig
    model: ModelConfig
    split: SplitConfig = SplitConfig()
    gates: GatesConfig
    monitoring: MonitoringConfig
    rollout: RolloutConfig
    serving: ServingConfig = ServingConfig()
    batch: BatchConfig = BatchConfig()
    compute: ComputeConfig = ComputeConfig()
    alerts: AlertsConfig = AlertsConfig()
    generation: GenerationConfig | None = None
    servers: ServersConfig = ServersConfig()
    ci: CIConfig = CIConfig()

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        """Missing gates, monitoring and rollout settings take the task type's documented defaults."""
        if not isinstance(data, dict):
            return data
        model = data.get("model")
        task = model.get("task", "binary") if isinstance(model, dict) else "binary"
        data = dict(data)
        for section, defaults in section_defaults(str(task)).items():
            given = data.get(section)
            if given is None:
                data[section] = defaults
            elif isinstance(given, dict):
                data[section] = {**defaults, **given}
        return data

    @model_validator(mode="after")
    def _features_in_schema(self) -> TollgateConfig:
        cols = self.dataset.columns
        wanted = {"numeric": ("int", "float"), "categorical": ("category",), "boolean": ("bool",)}
        seen: set[str] = set()
        for group, types in wanted.items():
            for name in getattr(self.features, group):
                if name not in cols:
                    raise ValueError(f"features.{group}: '{name}' is not in dataset.columns")
                if cols[name].type not in types:
                    raise ValueError(
                        f"features.{group}: '{name}' has type {cols[name].type}, expected {' or '.join(types)}"
                    )
                if name in seen:
                    raise ValueError(f"features: '{name}' is listed twice")
                seen.add(name)
        if not seen:
            raise ValueError("features: no feature columns listed")
        roles = {self.dataset.id, self.dataset.target, self.dataset.timestamp}
        if roles & seen:
            raise ValueError(f"features: {sorted(roles & seen)} are id/target/timestamp columns, not features")
        self._task_coherent()
        return self

    def _task_coherent(self) -> None:
        from tollgate.objective import METRICS, PRIMARY, higher_is_better

        task, target = self.model.task, self.dataset.columns[self.dataset.target]
        if task == "regression" and target.type not in ("int", "float"):
            raise ValueError(f"model.task regression needs a numeric target; '{self.dataset.target}' is {target.type}")
        if task != "regression" and target.type != "label":
            raise ValueError(
                f"model.task {task} needs a target of type label with its class 'values'; "
                f"'{self.dataset.target}' is {target.type}"
            )
        classes = len(target.values or [])
        if task == "binary" and classes != 2:
            raise ValueError(
                f"model.task binary needs exactly 2 label values; '{self.dataset.target}' has {target.values}"
            )
        if task != "binary" and target.positive is not None:
            raise ValueError(f"'{self.dataset.target}.positive' is only for binary tasks, not {task}")
        if task == "multiclass" and classes < 3:
            raise ValueError(f"model.task multiclass needs 3 or more label values; got {target.values} (use binary)")
        if self.model.kind not in MODEL_KINDS[task]:
            raise ValueError(
                f"model.kind {self.model.kind} does not fit task {task}: use {' or '.join(MODEL_KINDS[task])}"
            )
        for group in ("minimums", "maximums"):
            for metric in getattr(self.gates, group):
                if metric not in METRICS[task]:
                    raise ValueError(
                        f"gates.{group}: '{metric}' is not a {task} metric; expected one of {', '.join(METRICS[task])}"
                    )
        mon, primary = self.monitoring, PRIMARY[task]
        worse_first = (
            mon.live_severe_at > mon.live_degraded_at
            if higher_is_better(primary)
            else mon.live_severe_at < mon.live_degraded_at
        )
        if worse_first:
            raise ValueError(
                f"monitoring.live_severe_at ({mon.live_severe_at}) must be worse than live_degraded_at "
                f"({mon.live_degraded_at}) for {primary} ({'higher' if higher_is_better(primary) else 'lower'} is better)"
            )

    def digest(self) -> str:
        """A stable sha256 of the resolved config (servers and ci excluded: they do not change a model)."""
        body = self.model_dump(mode="json", exclude={"servers", "ci"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class ConfigError(Exception):
    """A configuration problem; `problems` lists one 'source: key.path: reason' line per error."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedConfig:
    """The typed config plus where it came from."""

    config: TollgateConfig
    path: Path
    env: str
    sources: dict[str, str]

    @property
    def root(self) -> Path:
        """The project root: the folder holding configs/ (paths in the config are relative to it)."""
        return self.path.resolve().parent.parent if self.path.parent.name == "configs" else self.path.parent


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError([f"{path}: file not found"])
    if path.is_dir():
        raise ConfigError([f"{path}: is a directory, expected a YAML file"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: top level must be a mapping, got {type(data).__name__}"])
    return data


def _merge(base: dict[str, Any], top: dict[str, Any], source: str, sources: dict[str, str], prefix: str) -> None:
    """Deep-merge `top` into `base` in place, recording which source set each leaf."""
    for key, value in top.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, source, sources, path + ".")
        else:
            base[key] = value
            sources[path] = source


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    """TOLLGATE__GATES__CONFIDENCE=0.9 -> {"gates.confidence": ("TOLLGATE__GATES__CONFIDENCE", 0.9)} as nested dicts."""
    out: dict[str, dict[str, Any]] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        tree: dict[str, Any] = {}
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = yaml.safe_load(raw) if raw != "" else None
        out[name] = tree
    return out


def _source_of(loc: tuple[int | str, ...], sources: dict[str, str], default: str) -> str:
    parts = [str(p) for p in loc]
    for n in range(len(parts), 0, -1):
        hit = sources.get(".".join(parts[:n]))
        if hit:
            return hit
    return default


def load_config(
    path: str | Path = "configs/pipeline.yaml", env: str = "dev", environ: dict[str, str] | None = None
) -> LoadedConfig:
    """Load, merge and validate the config; raise ConfigError listing every problem."""
    path = Path(path)
    if env not in ENVIRONMENTS:
        raise ConfigError([f"--env: unknown environment '{env}', expected one of {', '.join(ENVIRONMENTS)}"])
    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}
    _merge(merged, _read_yaml(path), str(path), sources, "")
    overlay = path.parent / "environments" / f"{env}.yaml"
    if overlay.exists():
        _merge(merged, _read_yaml(overlay), str(overlay), sources, "")
    for var, tree in _env_overrides(dict(os.environ if environ is None else environ)).items():
        _merge(merged, tree, f"environment variable {var}", sources, "")
    try:
        cfg = TollgateConfig.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"])
            key = ".".join(str(p) for p in loc) or "(top level)"
            source = _source_of(loc, sources, str(path))
            reason = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                reason = "unknown key"
            elif err["type"] == "missing" and key in UNITS_OF_THE_TARGET:
                reason = "required for a regression: it is in the target's units (`tollgate config init` derives it)"
            elif err["type"] == "missing":
                reason = "required key is missing"
            problems.append(f"{source}: {key}: {reason}")
        raise ConfigError(problems) from None
    return LoadedConfig(config=cfg, path=path, env=env, sources=sources)
