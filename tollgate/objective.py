"""What a model predicts and how it is judged, per task type: binary, multiclass and regression.

One object (`Objective`) answers every task-dependent question the pipeline asks, so training, the gate,
serving, drift and backfill agree on it:
- `outputs(model, X)`: the model's raw answer. Binary: the positive-class probability (n,); multiclass: the
  class probabilities (n, k) in `classes` order; regression: the predicted value (n,).
- `score(out)`: one number per row, logged as `score` and used for score drift and rollout PSI. Binary: the
  positive-class probability; multiclass: the probability of the predicted class; regression: the value.
- `decision(out)`: what the gateway decides. Binary: 1 when score >= threshold; multiclass: the predicted
  class; regression: the value.
- `metrics(y, out)`: the task's metrics (`METRICS`); `primary` names the one the gate compares with a paired
  bootstrap and live monitoring judges (binary `auc`, multiclass `auc_ovr`: macro one-vs-rest AUC,
  regression `rmse`); `improvement(a, b)` is a - b signed so that positive is better.
- `statistic(y, out)`: the primary metric as a resampling statistic (`Statistic.value(rows)`), O(n) memory.
Pure functions of arrays: no config file, no I/O.
"""

from __future__ import annotations

import math
import os
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from tollgate.config import TollgateConfig

PRIMARY: dict[str, str] = {"binary": "auc", "multiclass": "auc_ovr", "regression": "rmse"}
METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("n", "positives", "auc", "log_loss", "precision", "recall", "brier", "calibration_error"),
    "multiclass": ("n", "auc_ovr", "log_loss", "accuracy"),  # plus recall.<class> per class
    "regression": ("n", "rmse", "mae", "r2"),
}
_LOWER_IS_BETTER = {"log_loss", "brier", "calibration_error", "rmse", "mae"}
PROB_EPS = 1e-7


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` is better (AUC, R2, accuracy) or worse (log loss, RMSE)."""
    return metric.split(".")[0] not in _LOWER_IS_BETTER


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of binary probabilities over equal-width bins."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    err = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            err += mask.mean() * abs(float(y[mask].mean()) - float(p[mask].mean()))
    return float(err)


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """AUC, log loss, precision/recall at threshold, Brier score and calibration error (AUC NaN if one class)."""
    from sklearn.metrics import brier_score_loss, log_loss, precision_score, recall_score, roc_auc_score

    y = np.asarray(y, dtype="int64")
    p = np.asarray(p, dtype="float64")
    if len(y) == 0:
        return {"n": 0.0, **{k: float("nan") for k in METRICS["binary"] if k != "n"}}
    clipped = np.clip(p, PROB_EPS, 1 - PROB_EPS)
    decided = (p >= threshold).astype("int64")
    both = len(np.unique(y)) == 2
    return {
        "n": float(len(y)),
        "positives": float(y.sum()),
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, clipped, labels=[0, 1])),
        "precision": float(precision_score(y, decided, zero_division=0)),
        "recall": float(recall_score(y, decided, zero_division=0)),
        "brier": float(brier_score_loss(y, p)),
        "calibration_error": calibration_error(y, p),
    }


def multiclass_metrics(
    y: np.ndarray, proba: np.ndarray, classes: tuple[int, ...], names: tuple[Any, ...] = ()
) -> dict[str, float]:
    """Macro one-vs-rest AUC (NaN unless every class is present), log loss, accuracy and per-class recall
    (`recall.<name>`, names the class values in code order; default the codes)."""
    from sklearn.metrics import accuracy_score, log_loss, recall_score, roc_auc_score

    y = np.asarray(y, dtype="int64")
    proba = np.asarray(proba, dtype="float64").reshape(len(y), len(classes))
    labels = list(classes)
    if len(y) == 0:
        return {"n": 0.0, "auc_ovr": math.nan, "log_loss": math.nan, "accuracy": math.nan}
    predicted = np.asarray(classes)[np.argmax(proba, axis=1)]
    all_present = set(np.unique(y)) == set(labels)
    auc = float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=labels)) if all_present else math.nan
    recalls = recall_score(y, predicted, labels=labels, average=None, zero_division=0)
    return {
        "n": float(len(y)),
        "auc_ovr": auc,
        "log_loss": float(log_loss(y, np.clip(proba, PROB_EPS, 1.0), labels=labels)),
        "accuracy": float(accuracy_score(y, predicted)),
        **{f"recall.{metric_label(c)}": float(r) for c, r in zip(names or labels, recalls, strict=True)},
    }


def regression_metrics(y: np.ndarray, value: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R2 (R2 NaN with fewer than two rows or a constant target)."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y = np.asarray(y, dtype="float64")
    value = np.asarray(value, dtype="float64")
    if len(y) == 0:
        return {"n": 0.0, "rmse": math.nan, "mae": math.nan, "r2": math.nan}
    r2 = float(r2_score(y, value)) if len(y) >= 2 and np.ptp(y) > 0 else math.nan
    return {
        "n": float(len(y)),
        "rmse": float(math.sqrt(mean_squared_error(y, value))),
        "mae": float(mean_absolute_error(y, value)),
        "r2": r2,
    }


class Statistic(Protocol):
    """The primary metric of one scored sample, evaluable on a resample of its rows."""

    def value(self, rows: np.ndarray | None = None) -> float:
        """The metric over the drawn `rows` (indices, with repeats; all rows when None)."""
        ...

    def weighted(self, w: np.ndarray) -> float:
        """The metric with row i counted w[i] times (small non-negative integers, in row order)."""
        ...


class TieGroups:
    """Binary AUC as a resampling statistic: the score vector is reduced once to its sorted tie groups, each
    row's key is (group, label), so a resample needs one gather and one bincount, then O(groups) work."""

    def __init__(self, y: np.ndarray, scores: np.ndarray):
        uniq, group = np.unique(np.asarray(scores, dtype="float64"), return_inverse=True)
        self.groups = len(uniq)
        keys = group.astype("int64") * 2 + np.asarray(y).astype("int64")
        self.key = keys.astype("int32" if 2 * len(uniq) < 2**31 else "int64")

    def value(self, rows: np.ndarray | None = None) -> float:
        """AUC over the drawn rows; ties count one half, as midranks do; NaN when a class is missing."""
        keys = self.key if rows is None else self.key[rows]
        counts = np.bincount(keys, minlength=2 * self.groups).reshape(self.groups, 2)
        neg, pos = counts[:, 0], counts[:, 1]
        p, q = int(pos.sum()), int(neg.sum())
        if p == 0 or q == 0:
            return float("nan")
        # In integers (exact: at most n^2/2 < 2^63 for any n below 3e9): 2 x (pairs ranked right + ties / 2).
        return (2 * int(np.dot(pos, np.cumsum(neg))) - int(np.dot(pos, neg))) / (2 * p * q)

    auc = value

    def weighted(self, w: np.ndarray) -> float:
        """AUC with row i counted w[i] times, in exact integers: the counts are gathered into score order and
        cumulated; with ties, each tie group's positives and the negatives below it and through it are read off
        the cumulative sums at the group's bounds (a model's scores tie often: a tree ensemble's 300k holdout
        scores held ~250k distinct values, and summing per group with `np.add.reduceat` cost 3x this)."""
        order, ys, bounds = self._sorted()
        ws = w[order]
        pos = ws * ys
        neg = ws - pos
        n = len(ws)
        cum_type = "int32" if n and int(ws.max()) * n < 2**31 else "int64"
        if bounds is None:  # no ties: a row is positive or negative, so pos . neg is 0
            p, q = int(pos.sum(dtype="int64")), int(neg.sum(dtype="int64"))
            if p == 0 or q == 0:
                return float("nan")
            if int(ws.max()) * q < 2**31:  # each pos x cum product fits int32: the fast path
                cum32 = np.cumsum(neg, dtype="int32")
                return int(np.multiply(pos, cum32, dtype="int32").sum(dtype="int64")) / (p * q)
            return int(np.dot(pos.astype("int64"), np.cumsum(neg, dtype="int64"))) / (p * q)
        starts, ends = bounds
        # P[k], C[k]: positive / negative counts among the first k rows in score order.
        P, C = np.zeros(n + 1, cum_type), np.zeros(n + 1, cum_type)
        np.cumsum(pos, dtype=cum_type, out=P[1:])
        np.cumsum(neg, dtype=cum_type, out=C[1:])
        p, q = int(P[-1]), int(C[-1])
        if p == 0 or q == 0:
            return float("nan")
        # 2 x (pairs ranked right + ties / 2) = sum over groups of pos_g x (negatives below g + negatives through g)
        pos_g = P[ends].astype("int64") - P[starts]
        below_and_through = C[starts].astype("int64") + C[ends]
        if 2 * p * q < 2**63:  # every partial sum is below the total: exact in int64
            return int(np.dot(pos_g, below_and_through)) / (2 * p * q)
        return int(np.dot(pos_g.astype(object), below_and_through.astype(object))) / (2 * p * q)

    def _sorted(self) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """(row order by score, labels in that order, tie groups' (start, end) positions in that order, or None
        when no score ties); built once, and stored as one attribute so threads never see half of it."""
        done = getattr(self, "_by_score", None)
        if done is None:
            group, label = self.key >> 1, (self.key & 1).astype("uint8")
            order = np.argsort(group, kind="stable")
            gs = group[order]
            bounds = None
            if self.groups < len(gs):
                starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
                bounds = (starts, np.r_[starts[1:], len(gs)])
            done = self._by_score = (order, label[order], bounds)
        return done


class OneVsRestAuc:
    """Macro one-vs-rest AUC: the mean of each class's binary AUC (class vs rest, on that class's probability),
    over the classes present with both sides in the drawn rows."""

    def __init__(self, y: np.ndarray, proba: np.ndarray, classes: tuple[int, ...]):
        y = np.asarray(y)
        self.parts = [TieGroups((y == c).astype("int64"), proba[:, k]) for k, c in enumerate(classes)]

    def value(self, rows: np.ndarray | None = None) -> float:
        return self._mean([p.value(rows) for p in self.parts])

    def weighted(self, w: np.ndarray) -> float:
        return self._mean([p.weighted(w) for p in self.parts])

    @staticmethod
    def _mean(aucs: list[float]) -> float:
        present = [a for a in aucs if not math.isnan(a)]
        return float(np.mean(present)) if len(present) >= 2 else float("nan")


class Rmse:
    """Root mean squared error as a resampling statistic (squared errors computed once)."""

    def __init__(self, y: np.ndarray, value: np.ndarray):
        self.sq = (np.asarray(y, dtype="float64") - np.asarray(value, dtype="float64")) ** 2

    def value(self, rows: np.ndarray | None = None) -> float:
        sq = self.sq if rows is None else self.sq[rows]
        return float(math.sqrt(sq.mean())) if len(sq) else float("nan")

    def weighted(self, w: np.ndarray) -> float:
        total = int(w.sum(dtype="int64"))
        return float(math.sqrt(np.dot(w, self.sq) / total)) if total else float("nan")


Label = bool | int | str  # a class value as the user's data and config hold it


def positive_class(values: list[Label], positive: Label | None = None) -> Label:
    """The positive class of a binary label: `positive` when given; else 1 (or true) when the values are 0/1 or
    booleans; else the last value listed (README "Bring your own data")."""
    if positive is not None:
        return positive
    if set(values) == {0, 1}:
        return next(v for v in values if v == 1)
    return values[-1]


def class_codes(task: str, values: list[Label], positive: Label | None = None) -> tuple[Label, ...]:
    """The release's fixed encoding: the class values in code order (code i is labels[i]). Binary: (the other
    class, the positive class), so code 1 is positive; multiclass: the values sorted."""
    if task == "binary":
        pos = positive_class(values, positive)
        return (next(v for v in values if v != pos), pos)
    return tuple(sorted(values, key=lambda v: (str(type(v)), v)))


def metric_label(label: Label) -> str:
    """A class value as it may appear in a metric name (MLflow allows letters, digits, _ - . / and space)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(label).lower() if isinstance(label, bool) else str(label))


def as_classes(values: Any, labels: tuple[Label, ...]) -> tuple[pd.Series, np.ndarray]:
    """Values read as the configured class values: the values themselves, their text ('1', ' yes', 'true'), whole
    floats for int classes. Returns (the class values: int64 for int classes, bool for booleans, else object;
    a bool mask of the values that are none of them, nulls included)."""
    lookup: dict[Any, Label] = {}
    for label in labels:
        forms: list[Any] = [label, str(label)]
        if isinstance(label, bool):
            forms += [str(label).lower(), str(int(label))]
        elif isinstance(label, int):
            forms += [f"{float(label)}"]
        lookup.update({f: label for f in forms})
    series = pd.Series(values)
    if not (pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)):
        series = series.astype(object).map(lambda v: v.strip() if isinstance(v, str) else v)
    mapped = series.map(lookup)
    bad = mapped.isna().to_numpy(dtype=bool)
    if bad.any():
        return mapped.astype(object), bad
    if all(type(v) is int for v in labels):
        return mapped.astype("int64"), bad
    if all(isinstance(v, bool) for v in labels):
        return mapped.astype(bool), bad
    return mapped.astype(object), bad


@dataclass(frozen=True)
class Objective:
    """The task-dependent behaviour of one model (see the module docstring).

    Classification models are trained on class codes 0..k-1 (`classes`); `labels` are the class values they stand
    for (labels[code]), which answers, decisions, the prediction log, labels files and reports carry. Empty
    `labels` means the codes are the values."""

    task: str  # binary | multiclass | regression
    classes: tuple[int, ...] = ()
    threshold: float = 0.5
    labels: tuple[Label, ...] = ()

    def __post_init__(self) -> None:
        if self.task == "binary" and not self.classes:
            object.__setattr__(self, "classes", (0, 1))
        if not self.labels:
            object.__setattr__(self, "labels", tuple(self.classes))
        if len(self.labels) != len(self.classes):
            raise ValueError(f"labels {self.labels} do not match classes {self.classes}")

    @classmethod
    def from_config(cls, cfg: TollgateConfig) -> Objective:
        """The objective of a (release's) config."""
        task = cfg.model.task
        spec = cfg.dataset.columns[cfg.dataset.target]
        if task == "regression":
            return cls(task, (), cfg.model.decision_threshold)
        labels = class_codes(task, list(spec.values or []), spec.positive)
        return cls(task, tuple(range(len(labels))), cfg.model.decision_threshold, labels)

    @property
    def identity(self) -> bool:
        """Whether the class values are their codes (ints 0..k-1 in order)."""
        return all(type(v) is int and v == c for v, c in zip(self.labels, self.classes, strict=True))

    def encode(self, values: Any) -> np.ndarray:
        """Class values as their int64 codes; raises ValueError naming values that are not classes."""
        arr = np.asarray(values)
        if (
            self.identity
            and arr.dtype.kind in "iuf"
            and (not len(arr) or (arr.min() >= 0 and arr.max() < len(self.labels)))
        ):
            return arr.astype("int64")
        series = pd.Series(arr)
        mapped, bad = as_classes(series, self.labels)
        if bad.any():
            shown = list(dict.fromkeys(str(v) for v in series[bad].head(20)))[:5]
            raise ValueError(f"values {shown} are not among the classes {list(self.labels)}")
        codes = {label: code for code, label in enumerate(self.labels)}
        return mapped.map(codes).to_numpy(dtype="int64")

    def decode(self, codes: Any) -> np.ndarray:
        """Class codes as the class values (an int64, bool or object array)."""
        return self._label_array[np.asarray(codes, dtype="int64")]

    @property
    def _label_array(self) -> np.ndarray:
        if self.labels and all(isinstance(v, str) for v in self.labels):
            return np.asarray(self.labels, dtype=object)
        return np.asarray(self.labels)

    @property
    def primary(self) -> str:
        """The metric the gate compares and live monitoring judges."""
        return PRIMARY[self.task]

    @property
    def is_classification(self) -> bool:
        return self.task != "regression"

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every metric `metrics` returns (multiclass adds recall.<class>)."""
        extra = tuple(f"recall.{metric_label(c)}" for c in self.labels) if self.task == "multiclass" else ()
        return METRICS[self.task] + extra

    def target(self, values: Any) -> np.ndarray:
        """Class values as their int64 codes (classification) or values as float64 (regression)."""
        return np.asarray(values, dtype="float64") if self.task == "regression" else self.encode(values)

    def outputs(self, model: Any, features: Any) -> np.ndarray:
        """The model's answer for a feature frame (see the module docstring for the shape per task)."""
        if self.task == "regression":
            return np.asarray(model.predict(features), dtype="float64")
        proba = np.asarray(model.predict_proba(features), dtype="float64")
        if self.task == "binary":
            return proba[:, 1]
        fitted = tuple(int(c) for c in getattr(model, "classes_", self.classes))
        if fitted != self.classes:  # a class absent from training: its probability is 0
            full = np.zeros((len(proba), len(self.classes)))
            for k, c in enumerate(fitted):
                full[:, self.classes.index(c)] = proba[:, k]
            return full
        return proba

    def score(self, out: np.ndarray) -> np.ndarray:
        """One float per row: positive-class probability, predicted-class probability, or the value."""
        return np.asarray(out.max(axis=1) if self.task == "multiclass" else out, dtype="float64")

    def decision(self, out: np.ndarray) -> np.ndarray:
        """What is decided per row, as class values: the positive class at the threshold (else the other), the
        predicted class; or the value."""
        if self.task == "binary":
            return self.decode((np.asarray(out) >= self.threshold).astype("int64"))
        if self.task == "multiclass":
            return self.decode(np.argmax(out, axis=1))
        return np.asarray(out, dtype="float64")

    def metrics(self, y: Any, out: np.ndarray) -> dict[str, float]:
        """The task's metrics of outputs `out` against truth `y` (class codes, see `target`, or values)."""
        if self.task == "binary":
            return binary_metrics(self._truth(y), out, self.threshold)
        if self.task == "multiclass":
            return multiclass_metrics(self._truth(y), out, self.classes, self.labels)
        return regression_metrics(self._truth(y), out)

    def statistic(self, y: Any, out: np.ndarray) -> Statistic:
        """The primary metric of (y, out) as a resampling statistic (y: class codes or values)."""
        if self.task == "binary":
            return TieGroups(self._truth(y), out)
        if self.task == "multiclass":
            return OneVsRestAuc(self._truth(y), out, self.classes)
        return Rmse(self._truth(y), out)

    def _truth(self, y: Any) -> np.ndarray:
        return np.asarray(y, dtype="float64" if self.task == "regression" else "int64")

    def improvement(self, challenger: float, baseline: float, metric: str | None = None) -> float:
        """challenger - baseline of `metric` (default the primary), signed so that positive means better."""
        diff = challenger - baseline
        return diff if higher_is_better(metric or self.primary) else -diff

    def worse_than(self, value: float, limit: float, metric: str | None = None) -> bool:
        """Whether `value` of `metric` (default the primary) is worse than `limit`."""
        return value < limit if higher_is_better(metric or self.primary) else value > limit

    def answer(self, out_row: Any) -> dict[str, Any]:
        """The gateway's answer fields for one row's output: score and decision, plus the class probabilities
        (multiclass, keyed by class as text) or the predicted value (regression)."""
        if self.task == "binary":
            p = float(out_row)
            return {
                "score": p,
                "decision": self.labels[int(p >= self.threshold)] if self.labels else int(p >= self.threshold),
            }
        if self.task == "multiclass":
            probs = [float(v) for v in out_row]
            k = int(np.argmax(probs))
            return {
                "score": probs[k],
                "decision": self.labels[k],
                "probabilities": {str(c): v for c, v in zip(self.labels, probs, strict=True)},
            }
        v = float(out_row)
        return {"score": v, "decision": v, "value": v}

    def from_log(self, score: Any, proba: Any = None) -> np.ndarray:
        """Outputs rebuilt from prediction-log columns: `score` (binary, regression) or the logged class
        probabilities `proba` (multiclass, one list per row)."""
        if self.task == "multiclass":
            return np.asarray([list(p) for p in proba], dtype="float64").reshape(-1, len(self.classes))
        return np.asarray(score, dtype="float64")


POISSON_MIN_ROWS = 20_000  # from here on resamples are Poisson(1) row weights (see paired_bootstrap)
MAX_THREADS = 4
# Poisson(1) by inverse CDF on 16-bit uniforms: a table of 65,536 counts (CDF resolution 2^-16; P(count > 8) is
# 1e-6, so counts fit uint8). One uint16 draw and one table lookup per row: ~10x cheaper than rng.poisson.
_POISSON_TABLE = np.searchsorted(
    np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(20)]), (np.arange(65536) + 0.5) / 65536
).astype("uint8")


def poisson_weights(rng: np.random.Generator, n: int) -> np.ndarray:
    """n independent Poisson(1) counts (uint8), the row weights of one Poisson-bootstrap resample."""
    return _POISSON_TABLE[rng.integers(0, 65536, size=n, dtype="uint16")]


def paired_bootstrap(
    challenger: Statistic,
    baseline: Statistic,
    n: int,
    samples: int,
    confidence: float,
    seed: int,
    higher_better: bool = True,
) -> tuple[float, float, float]:
    """(observed improvement, lower, upper) of a two-sided `confidence` percentile interval of the challenger's
    improvement over the baseline (challenger - baseline, sign flipped when lower is better), resampling rows
    jointly; time O(samples x n), memory O(n): no (samples x n) matrix is ever built.

    Below POISSON_MIN_ROWS rows, resample b draws exactly the rows of rng.integers(0, n, (samples, n))[b] (the
    classic multinomial bootstrap). From POISSON_MIN_ROWS rows each resample gives every row an independent
    Poisson(1) weight instead (the Poisson bootstrap, asymptotically the same distribution; at these sizes the
    difference is far inside Monte Carlo error), which needs no gather of the draws and works in uint8, and
    the statistics are computed on a pool of threads (NumPy releases the GIL) while this thread draws the next
    resample in order: each resample lands in its own slot, so the interval is the same for the same seed
    however the threads are scheduled."""
    sign = 1.0 if higher_better else -1.0
    rng = np.random.default_rng(seed)
    diffs = np.empty(samples)
    if n < POISSON_MIN_ROWS:
        for b in range(samples):
            rows = rng.integers(0, n, size=n)
            diffs[b] = sign * (challenger.value(rows) - baseline.value(rows))
    else:

        def one(b: int, w: np.ndarray) -> None:
            diffs[b] = sign * (challenger.weighted(w) - baseline.weighted(w))

        workers = max(1, min(os.cpu_count() or 1, MAX_THREADS))
        with ThreadPoolExecutor(workers, thread_name_prefix="bootstrap") as pool:
            pending: deque[Future[None]] = deque()
            for b in range(samples):
                pending.append(pool.submit(one, b, poisson_weights(rng, n)))
                while len(pending) > 2 * workers:  # bounded memory: a few resamples in flight
                    pending.popleft().result()
            for f in pending:
                f.result()
    d = diffs[~np.isnan(diffs)]
    alpha = (1 - confidence) / 2
    observed = sign * (challenger.value() - baseline.value())
    if len(d) == 0:
        return observed, float("nan"), float("nan")
    return observed, float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))
