"""The gateway's Prometheus metrics: one CollectorRegistry per gateway, label values from fixed sets only.

Route labels come from ROUTES (anything else is "other"), statuses and error kinds from the gateway's own code,
model versions and roles from the registry and the router, so a client cannot grow the number of series with
the paths or bodies it sends. Monitoring signals (drift, live metric, failed alert deliveries) are read from
`tollgate.signals` at scrape time, so the page shows what the monitoring flows last recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tollgate.paths import StatePaths
from tollgate.signals import alert_failures, read_signals

ROUTES = (
    "/predict",
    "/health",
    "/metrics",
    "/admin/reload",
    "/admin/rollback",
    "/admin/preflight",
    "/admin/state",
    "/admin/lease",
)
OTHER_ROUTE = "other"
_ROUTE_SET = frozenset(ROUTES)
ERROR_KINDS = (
    "validation",
    "batch",
    "canary",
    "shadow",
    "shadow_dropped",
    "reload",
    "untrusted_release",
    "unproven_stage",
    "internal",
)
REFUSAL_REASONS = ("missing_token", "wrong_token", "admin_disabled")
# What a request or connection was refused for: a serving.* limit by its setting's name, or the media type.
LIMITS = (
    "max_body_bytes",
    "max_batch_size",
    "max_string_length",
    "body_timeout_s",
    "header_timeout_s",
    "max_header_bytes",
    "max_connections",
    "content_type",
)
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)
DEGRADED_STATUSES = ("degraded", "severe")
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()


def route_label(path: str) -> str:
    """The route label of a request path: a known route, else "other" (never the raw path)."""
    return path if path in _ROUTE_SET else OTHER_ROUTE


def _flag(value: Any) -> float:
    """1.0 for a recorded yes (1, true, "1", "true"), else 0.0."""
    if isinstance(value, str):
        return 1.0 if value.strip().lower() in ("1", "true", "yes") else 0.0
    return 1.0 if value is not None and float(value) > 0 else 0.0


class SignalsCollector(Collector):
    """Drift, live-metric and alert-delivery signals of one registered model, read at each scrape."""

    def __init__(self, paths: StatePaths, model: str):
        self.paths = paths
        self.model = model

    def _families(
        self,
    ) -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "tollgate_drift_detected", "1 when the latest drift check of the model detected drift", labels=["model"]
            ),
            GaugeMetricFamily(
                "tollgate_live_metric_degraded",
                "1 when the latest live-metric verdict of the model is degraded or severe",
                labels=["model"],
            ),
            CounterMetricFamily(
                "tollgate_alert_delivery_failures", "Alert deliveries that failed for the model", labels=["model"]
            ),
            CounterMetricFamily(
                "tollgate_gateway_restarts", "Restarts of the serving process by its supervisor (this state folder)"
            ),
            GaugeMetricFamily(
                "tollgate_estimated_metric",
                "The Production champion's primary metric (auc, auc_ovr or rmse) estimated from the prediction log "
                "before labels arrive (tollgate estimate, drift_check): the estimate and its 95% interval's bounds",
                labels=["model", "metric", "bound"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        """The families without reading any file (registration must not touch the disk)."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """The families with their current values."""
        signals = read_signals(self.paths, self.model)
        drift, degraded, failures, restarts, estimated = self._families()
        drift.add_metric([self.model], _flag(signals.get("drift_detected")))
        degraded.add_metric([self.model], 1.0 if signals.get("live_status") in DEGRADED_STATUSES else 0.0)
        failures.add_metric([self.model], float(len(alert_failures(self.paths, self.model))))
        path = self.paths.gateway_restarts
        restarts.add_metric([], float(sum(1 for _ in path.open()) if path.exists() else 0))
        metric = str(signals.get("estimated_metric", ""))
        for bound, key in (("estimate", "estimated_value"), ("low", "estimated_low"), ("high", "estimated_high")):
            if metric in ("auc", "auc_ovr", "rmse") and isinstance(signals.get(key), int | float):
                estimated.add_metric([self.model, metric, bound], float(signals[key]))
        return (drift, degraded, failures, restarts, estimated)


def _totals(metric: Counter) -> dict[tuple[str, ...], float]:
    """A counter's value per label tuple (public collect() API; for /admin/state, not the request path)."""
    out: dict[tuple[str, ...], float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[tuple(sample.labels.values())] = sample.value
    return out


class GatewayMetrics:
    """Every metric of one gateway, in its own registry (never the process-global one)."""

    def __init__(self, paths: StatePaths, model: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tollgate_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "tollgate_request_latency_seconds",
            "Latency of POST /predict requests",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.predictions = Counter(
            "tollgate_predictions", "Predictions by model version and role", ["model_version", "role"], registry=r
        )
        self.errors = Counter("tollgate_errors", "Errors by kind", ["kind"], registry=r)
        self.shadow_compared = Counter("tollgate_shadow_compared", "Shadow predictions compared", registry=r)
        self.shadow_disagreed = Counter(
            "tollgate_shadow_disagreements", "Shadow predictions whose decision differs from the champion's", registry=r
        )
        self.batches = Counter("tollgate_batches", "Micro-batches scored", registry=r)
        self.batch_rows = Counter("tollgate_batch_rows", "Rows scored in micro-batches", registry=r)
        self.admin_refused = Counter(
            "tollgate_admin_refused", "Admin requests refused for their token", ["route", "reason"], registry=r
        )
        self.limit_refusals = Counter(
            "tollgate_limit_refusals",
            "Requests and connections refused by a gateway limit (serving.<limit>) or for their content type",
            ["limit"],
            registry=r,
        )
        self.serving = Info("tollgate_serving", "The versions being served and the rollout mode", registry=r)
        self.lease_lapses = Counter(
            "tollgate_rollout_lease_lapses",
            "Rollouts the gateway stopped because no controller renewed their lease",
            registry=r,
        )
        self.canary_share = Gauge("tollgate_canary_share", "Share of entities the canary answers", registry=r)
        for kind in ERROR_KINDS:  # present from the start, so rate() alerts see a zero rather than no series
            self.errors.labels(kind)
        self._limit_children = {limit: self.limit_refusals.labels(limit) for limit in LIMITS}
        r.register(SignalsCollector(paths, model))
        self._request_children: dict[tuple[str, int], Any] = {}

    def count_request(self, path: str, status: int) -> None:
        """Count one answered request under its route label (children cached: this is the hot path)."""
        key = (route_label(path), status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        child.inc()

    def error(self, kind: str, n: float = 1) -> None:
        """Count `n` errors of a kind from ERROR_KINDS."""
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}; expected one of {ERROR_KINDS}")
        self.errors.labels(kind).inc(n)

    def refused(self, path: str, reason: str) -> None:
        """Count an admin request refused for its token (reason from REFUSAL_REASONS)."""
        self.admin_refused.labels(route_label(path), reason).inc()

    def refusal(self, limit: str) -> None:
        """Count one request or connection refused by a limit from LIMITS."""
        child = self._limit_children.get(limit)
        if child is None:
            raise ValueError(f"unknown limit {limit!r}; expected one of {LIMITS}")
        child.inc()

    def add_counts(self, predictions: Mapping[tuple[str, str], int], errors: Mapping[str, int]) -> None:
        """Add a batch's prediction counts by (version, role) and error counts by kind."""
        for (version, role), n in predictions.items():
            self.predictions.labels(version, role).inc(n)
        for kind, n in errors.items():
            self.error(kind, n)

    def served(self, describe: Mapping[str, Any]) -> None:
        """Record what is being served (champion, challenger, mode, share)."""
        info = {k: str(describe[k] or "none") for k in ("champion", "challenger", "mode")}
        for role in ("champion", "challenger"):  # onnx | sklearn, and why not onnx
            path = str(describe.get(f"{role}_scoring") or "none")
            info[f"{role}_scoring"], _, why = path.partition(": ")
            info[f"{role}_scoring_reason"] = why
        self.serving.info(info)
        self.canary_share.set(float(describe["share"] or 0.0))

    def render(self) -> bytes:
        """The text exposition, to be sent with CONTENT_TYPE."""
        return generate_latest(self.registry)

    def state(self) -> dict[str, Any]:
        """The counters /admin/state reports."""
        (compared,) = _totals(self.shadow_compared).values()
        (disagreed,) = _totals(self.shadow_disagreed).values()
        (batches,) = _totals(self.batches).values()
        (rows,) = _totals(self.batch_rows).values()
        return {
            "predictions": {f"{v}/{role}": int(n) for (v, role), n in _totals(self.predictions).items()},
            "errors": {kind: int(n) for (kind,), n in _totals(self.errors).items() if n},
            "shadow_compared": int(compared),
            "shadow_disagreed": int(disagreed),
            "batches": int(batches),
            "batch_rows": int(rows),
        }
