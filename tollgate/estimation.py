"""Estimated performance before the labels arrive (issue 36): an estimator fitted on the gate's holdout and stored
with the release as JSON (no pickle), and from it the expected primary metric of any set of logged predictions,
with a 95% interval.

Per task (the release's primary metric):
- binary, `auc` (confidence-based estimation, as NannyML's CBPE): an isotonic calibration map gives a probability
  q_i for each logged score s_i; the labels are modelled as independent draws y_i ~ Bernoulli(q_i). The estimate
  is the AUC those labels give in expectation (expected concordant positive-negative pairs over expected pairs),
  and the interval is the 2.5-97.5 percentiles of the AUC over `draws` simulated label sets (each draw one pass
  over the rows with the scores' ranks computed once; no draws x rows matrix is ever built).
- multiclass, `auc_ovr` (macro one-vs-rest AUC): one isotonic map per class (class k's probability vs "is k"),
  the calibrated probabilities renormalised per row; the estimate is the mean over classes of the expected
  one-vs-rest AUC, the interval from label sets drawn per row from the calibrated class distribution.
- regression, `rmse` (direct loss estimation, in its simplest documented form): the holdout's predicted values
  cut into quantile bins, each bin keeping the mean and variance of its squared error. A logged prediction's
  expected squared error is its bin's mean; the estimate is the root of their average, the interval the root of
  that mean +- 1.96 standard errors (the rows' squared errors independent, each with its bin's variance). Unlike
  NannyML's DLE the error model sees the predicted value only, not the features: error that depends on a
  feature the prediction does not reflect is invisible to it.

What no estimate can see: a change of P(Y|X) (concept shift) leaves the outputs, the stored map and so the
estimate unchanged: the estimate stays confident and wrong. That is why estimates are checked against the labels
when they arrive (tasks/estimation.py reconciles them).

Maps are applied by linear interpolation (isotonic breakpoints) and clipped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np
from scipy.stats import rankdata

METHOD = "isotonic calibration + expected AUC (CBPE)"
METHODS = {
    "binary": METHOD,
    "multiclass": "isotonic calibration per class + expected macro one-vs-rest AUC (CBPE)",
    "regression": "expected squared error per bin of the predicted value (direct loss estimation, value only)",
}
DRAWS = 200
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Calibration:
    """A monotone map from a model score to the probability of the positive class (isotonic breakpoints)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    counts: tuple[int, ...] = ()  # holdout rows between breakpoints i and i+1 (what the map's value there rests on)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """The calibrated probability of each score."""
        return np.clip(np.interp(np.asarray(scores, dtype=float), self.x, self.y), 0.0, 1.0)

    def support(self, low: float, high: float) -> int | None:
        """Holdout rows the map's values over scores [low, high] were fitted on (None: not recorded)."""
        if not self.counts:
            return None
        last = len(self.counts) - 1
        i, j = (int(np.clip(np.searchsorted(self.x, v, side="right") - 1, 0, last)) for v in (low, high))
        return max(int(sum(self.counts[i : j + 1])), 1)

    def to_dict(self) -> dict[str, Any]:
        return {"x": list(self.x), "y": list(self.y), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Calibration:
        x, y, counts = body.get("x"), body.get("y"), body.get("counts") or []
        if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y) or not x:
            raise ValueError("a calibration map needs equal, non-empty lists x and y")
        if counts and len(counts) != len(x) - 1:
            raise ValueError("a calibration map's counts need one entry per pair of breakpoints")
        return cls(tuple(float(v) for v in x), tuple(float(v) for v in y), tuple(int(c) for c in counts))


def fit_calibration(y: np.ndarray, scores: np.ndarray) -> Calibration:
    """A monotone map fitted on equal-count bins of the scores (sqrt(n) bins, 10 to 200): isotonic regression of
    the bins' label rates on their mean scores, then piecewise linear through the bins' (mean score, fitted rate)
    and flat beyond the first and last. Plain isotonic regression on the rows overfits at the ends (small blocks
    at 0 and 1 make the expected AUC optimistic) and is flat within each block (every pair inside one reads as a
    coin flip); the bins bound the first and the line removes the second."""
    from sklearn.isotonic import IsotonicRegression

    scores = np.asarray(scores, dtype=float)
    y = np.asarray(y, dtype=float)
    bins = int(min(max(math.sqrt(len(y)), 10), 200, len(y)))
    parts = np.array_split(np.argsort(scores, kind="stable"), bins)
    size = np.array([len(p) for p in parts])
    x = np.array([scores[p].mean() for p in parts])
    rate = np.array([y[p].mean() for p in parts])
    x, at = np.unique(x, return_inverse=True)  # bins of one tied score value (a tree's leaf) become one point
    rate = np.bincount(at, weights=rate * size) / np.bincount(at, weights=size)
    size = np.bincount(at, weights=size).astype(int)
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0).fit(x, rate, sample_weight=size).predict(x)
    rows = (size[:-1] + size[1:]) // 2  # between two centres: half of each bin
    return Calibration(tuple(map(float, x)), tuple(map(float, fitted)), tuple(map(int, rows)))


@dataclass(frozen=True)
class Estimate:
    """An estimated metric over n predictions, with its interval (NaN when it cannot be estimated)."""

    metric: str
    value: float
    low: float
    high: float
    n: int
    why: str = ""  # why there is no estimate, when value is NaN

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def covers(self, realized: float) -> bool:
        """Whether a realized value lies inside the interval."""
        return bool(self.low <= realized <= self.high)


def expected_auc(q: np.ndarray, scores: np.ndarray) -> float:
    """E[concordant pairs] / E[positive-negative pairs] for labels ~ Bernoulli(q), tied scores counting a half."""
    q = np.asarray(q, dtype=float)
    order = np.argsort(scores, kind="stable")
    s, qs = np.asarray(scores, dtype=float)[order], q[order]
    neg = 1.0 - qs
    # per group of equal scores: the negatives strictly below, and the negatives within the group
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(s)]))
    neg_by_group = np.bincount(group, weights=neg)
    below = np.r_[0.0, np.cumsum(neg_by_group)[:-1]][group]
    same = neg_by_group[group] - neg  # the group's other rows
    concordant = float(np.sum(qs * (below + 0.5 * same)))
    pairs = float(qs.sum() * neg.sum() - np.sum(qs * neg))  # every ordered (pos, neg) pair but a row with itself
    return concordant / pairs if pairs > 0 else float("nan")


NORMAL_FROM = 2_000  # rows from which simulated_aucs draws (sum of positive ranks, positives) jointly normal


def simulated_aucs(q: np.ndarray, scores: np.ndarray, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """The AUC of `draws` label sets drawn from Bernoulli(q) for these scores (NaN for a draw with one class).

    The AUC of a label set is (S - n1 (n1 + 1) / 2) / (n1 n0), S the sum of the positives' ranks and n1 their
    count. Both are sums of independent terms, so from NORMAL_FROM rows on (S, n1) is drawn from its exact mean
    and covariance as a bivariate normal (the central limit theorem; two numbers per draw instead of a pass over
    the rows, which made 1M rows cost 5 s); below that, each draw is a pass over the rows."""
    ranks = rankdata(scores)  # average ranks: ties count a half, as in the AUC
    rng = np.random.default_rng(seed)
    n = len(q)
    if n >= NORMAL_FROM:
        var = q * (1 - q)
        mean = [float(ranks @ q), float(q.sum())]
        cov = [[float((ranks * ranks) @ var), float(ranks @ var)], [float(ranks @ var), float(var.sum())]]
        s, n1 = rng.multivariate_normal(mean, cov, size=draws, method="cholesky").T
        n0 = n - n1
        with np.errstate(divide="ignore", invalid="ignore"):
            aucs = (s - n1 * (n1 + 1) / 2) / (n1 * n0)
        return np.where((n1 >= 1) & (n0 >= 1), aucs, np.nan)
    out = np.empty(draws)
    for d in range(draws):  # one pass over the rows per draw: memory stays one row vector
        y = rng.random(len(q)) < q
        n1 = int(y.sum())
        n0 = len(q) - n1
        out[d] = (ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0) if n1 and n0 else np.nan
    return out


def estimate_auc(
    calibration: Calibration,
    scores: np.ndarray,
    draws: int = DRAWS,
    seed: int = 0,
    min_rows: int = 30,
    map_se: float = 0.0,
) -> Estimate:
    """The expected AUC of these logged scores under the calibration map, with its 95% interval (widened by the
    map's own standard error `map_se`, see `auc_se`)."""
    scores = np.asarray(scores, dtype=float)
    scores = scores[np.isfinite(scores)]
    n = len(scores)
    if n < min_rows:
        return Estimate("auc", np.nan, np.nan, np.nan, n, f"{n} predictions, fewer than {min_rows}")
    q = calibration.apply(scores)
    value = expected_auc(q, scores)
    sims = simulated_aucs(q, scores, draws, seed)
    sims = sims[np.isfinite(sims)]
    if not np.isfinite(value) or len(sims) < draws // 2:
        return Estimate("auc", np.nan, np.nan, np.nan, n, "the calibrated probabilities leave one class only")
    return _from_draws("auc", value, sims, n, map_se)


def auc_se(y: np.ndarray, scores: np.ndarray) -> float:
    """The standard error of the AUC of (y, scores) (Hanley & McNeil 1982). A map fitted on these rows knows the
    model's discrimination no better than this: estimates under it carry it as their map error (0 when a class is
    missing)."""
    y = np.asarray(y).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if not n1 or not n0:
        return 0.0
    ranks = rankdata(np.asarray(scores, dtype=float))
    a = (ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return float(math.sqrt(max(a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a), 0.0) / (n1 * n0)))


def _from_draws(metric: str, value: float, sims: np.ndarray, n: int, map_se: float = 0.0) -> Estimate:
    """The draws' 2.5-97.5 percentile interval around `value`, each side widened in quadrature by the map's own
    error (z * map_se): the labels' noise and the map's are independent."""
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(sims, [tail, 100 - tail])
    extra = (NormalDist().inv_cdf(1 - (1 - CONFIDENCE) / 2) * map_se) ** 2
    low = value - math.sqrt(max(value - low, 0.0) ** 2 + extra)
    high = value + math.sqrt(max(high - value, 0.0) ** 2 + extra)
    return Estimate(metric, float(value), float(low), float(high), n)


def _too_few(metric: str, n: int, min_rows: int) -> Estimate | None:
    if n < min_rows:
        return Estimate(metric, np.nan, np.nan, np.nan, n, f"{n} predictions, fewer than {min_rows}")
    return None


SHIFT_P_VALUE = 0.001  # a calibration check below this says the stored map no longer holds


@dataclass(frozen=True)
class CalibrationCheck:
    """Does the stored map still describe labelled rows? A chi-square over bins of the expected value: observed vs
    expected sum per bin, over the variance of the rows' outcomes plus the map's own fitting error (its bin mean
    from holdout rows / bins rows). `shifted` when p < SHIFT_P_VALUE."""

    statistic: float
    df: int
    p_value: float
    rows: int
    why: str = ""

    @property
    def shifted(self) -> bool:
        return bool(self.p_value < SHIFT_P_VALUE)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shifted": self.shifted}


def _chi2(observed: list[float], expected: list[float], variance: list[float], rows: int) -> CalibrationCheck:
    from scipy.stats import chi2

    terms = [(o - e) ** 2 / v for o, e, v in zip(observed, expected, variance, strict=True) if v > 0]
    if not terms:
        return CalibrationCheck(math.nan, 0, 1.0, rows, "no bin with any variance to test against")
    stat = float(sum(terms))
    return CalibrationCheck(stat, len(terms), float(chi2.sf(stat, len(terms))), rows)


def _binned(
    scores: np.ndarray, outcome: np.ndarray, calibration: Calibration, fitted_rows: int, bins: int = 10
) -> CalibrationCheck:
    """Chi-square of outcome sums vs calibrated-probability sums over quantile bins of the score (a
    Hosmer-Lemeshow test against a known map). Each bin's variance adds the map's own error there: the binomial
    error of a mean over the holdout rows its values rest on (Calibration.support), so a window reaching where
    the holdout was thin is not called shifted for the map's noise."""
    n = len(scores)
    if n < 30:
        return CalibrationCheck(math.nan, 0, 1.0, n, f"{n} labelled rows, fewer than 30")
    q = calibration.apply(scores)
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, bins + 1)[1:-1]))
    b = np.searchsorted(edges, scores, side="right")
    obs: list[float] = []
    exp: list[float] = []
    var: list[float] = []
    sizes: list[int] = []
    for i in np.unique(b):
        rows = b == i
        k, qb = int(rows.sum()), q[rows]
        support = calibration.support(float(scores[rows].min()), float(scores[rows].max()))
        support = support or max(fitted_rows // bins, 1) if fitted_rows else support
        # the map's rate there rests on `support` rows; half a pseudo-row each way keeps a rate of 0 or 1 from
        # claiming certainty (a bin the holdout saw no positive in can still see one)
        rate = (float(qb.mean()) * support + 0.5) / (support + 1) if support else 0.0
        map_var = k * k * rate * (1 - rate) / support if support else 0.0
        obs.append(float(outcome[rows].sum()))
        exp.append(float(qb.sum()))
        var.append(float(np.sum(qb * (1 - qb))) + map_var)
        sizes.append(k)
    return _chi2(*_pooled(obs, exp, var, sizes), n)


MIN_EXPECTED = 5.0  # per bin, of each outcome: below it the chi-square approximation does not hold


def _pooled(
    obs: list[float], exp: list[float], var: list[float], sizes: list[int]
) -> tuple[list[float], list[float], list[float]]:
    """Adjacent bins pooled until each expects >= MIN_EXPECTED positives and negatives (the rule for a
    Hosmer-Lemeshow table); a short last group joins the one before it."""
    out: list[list[float]] = []
    acc = [0.0, 0.0, 0.0, 0.0]
    for o, e, v, k in zip(obs, exp, var, sizes, strict=True):
        acc = [acc[0] + o, acc[1] + e, acc[2] + v, acc[3] + k]
        if acc[1] >= MIN_EXPECTED and acc[3] - acc[1] >= MIN_EXPECTED:
            out.append(acc)
            acc = [0.0, 0.0, 0.0, 0.0]
    if acc[3]:
        if out:
            out[-1] = [a + b for a, b in zip(out[-1], acc, strict=True)]
        else:
            out.append(acc)
    return [g[0] for g in out], [g[1] for g in out], [g[2] for g in out]


class Estimator(Protocol):
    """What every task's estimator offers: its metric, an estimate of it for model outputs, and its JSON body."""

    @property
    def metric(self) -> str: ...

    def estimate(self, outputs: np.ndarray, draws: int = DRAWS, seed: int = 0, min_rows: int = 30) -> Estimate: ...

    def to_dict(self) -> dict[str, Any]: ...

    def calibration_check(self, outputs: np.ndarray, y: np.ndarray) -> CalibrationCheck: ...


@dataclass(frozen=True)
class BinaryEstimator:
    """Expected AUC of positive-class scores (one calibration map)."""

    calibration: Calibration
    fitted_rows: int = 0  # holdout rows the map was fitted on (0: unknown, the map taken as exact)
    map_se: float = 0.0  # the holdout AUC's standard error: the map's own error (auc_se)
    metric: str = "auc"

    def estimate(self, outputs: np.ndarray, draws: int = DRAWS, seed: int = 0, min_rows: int = 30) -> Estimate:
        return estimate_auc(self.calibration, outputs, draws, seed, min_rows, self.map_se)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibration": self.calibration.to_dict(),
            "fitted_rows": self.fitted_rows,
            "map_se": self.map_se,
        }

    def calibration_check(self, outputs: np.ndarray, y: np.ndarray) -> CalibrationCheck:
        scores = np.asarray(outputs, dtype=float)
        return _binned(scores, np.asarray(y, dtype=float), self.calibration, self.fitted_rows)


@dataclass(frozen=True)
class MulticlassEstimator:
    """Expected macro one-vs-rest AUC of class-probability rows (one calibration map per class)."""

    calibrations: tuple[Calibration, ...]
    fitted_rows: int = 0
    map_se: float = 0.0  # the mean of the classes' one-vs-rest holdout AUC standard errors (auc_se)
    metric: str = "auc_ovr"

    def probabilities(self, proba: np.ndarray) -> np.ndarray:
        """Each row's calibrated class probabilities, renormalised to sum to 1 (uniform where all are 0)."""
        q = np.column_stack([c.apply(proba[:, k]) for k, c in enumerate(self.calibrations)])
        total = q.sum(axis=1, keepdims=True)
        return np.where(total > 0, q / np.where(total > 0, total, 1.0), 1.0 / q.shape[1])

    def estimate(self, outputs: np.ndarray, draws: int = DRAWS, seed: int = 0, min_rows: int = 30) -> Estimate:
        proba = np.asarray(outputs, dtype=float).reshape(-1, len(self.calibrations))
        proba = proba[np.all(np.isfinite(proba), axis=1)]
        n, k = proba.shape
        if (few := _too_few(self.metric, n, min_rows)) is not None:
            return few
        q = self.probabilities(proba)
        value = float(np.mean([expected_auc(q[:, c], proba[:, c]) for c in range(k)]))
        ranks = [rankdata(proba[:, c]) for c in range(k)]
        rng = np.random.default_rng(seed)
        sims = np.empty(draws)
        edges = np.cumsum(q, axis=1)[:, :-1]
        for d in range(draws):  # one label set per draw: each row's class from its calibrated distribution
            label = (edges < rng.random(n)[:, None]).sum(axis=1)
            aucs = []
            for c in range(k):
                y = label == c
                n1 = int(y.sum())
                n0 = n - n1
                aucs.append((ranks[c][y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0) if n1 and n0 else np.nan)
            sims[d] = np.mean(aucs)  # NaN when a class is missing from the draw, as the realized metric would be
        sims = sims[np.isfinite(sims)]
        if not np.isfinite(value) or len(sims) < draws // 2:
            why = "the calibrated probabilities leave some class without rows in most draws"
            return Estimate(self.metric, np.nan, np.nan, np.nan, n, why)
        return _from_draws(self.metric, value, sims, n, self.map_se)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibrations": [c.to_dict() for c in self.calibrations],
            "fitted_rows": self.fitted_rows,
            "map_se": self.map_se,
        }

    def calibration_check(self, outputs: np.ndarray, y: np.ndarray) -> CalibrationCheck:
        """One test per class (its map on its probability vs "is that class"); the worst, Bonferroni-corrected."""
        proba = np.asarray(outputs, dtype=float).reshape(-1, len(self.calibrations))
        y = np.asarray(y)
        checks = [
            _binned(proba[:, c], (y == c).astype(float), m, self.fitted_rows) for c, m in enumerate(self.calibrations)
        ]
        worst = min(checks, key=lambda c: c.p_value)
        return CalibrationCheck(worst.statistic, worst.df, min(1.0, worst.p_value * len(checks)), worst.rows, worst.why)


@dataclass(frozen=True)
class RegressionEstimator:
    """Expected RMSE of predicted values: the squared error's mean and variance per bin of the prediction."""

    edges: tuple[float, ...]  # the bins' inner edges (bins = len(edges) + 1)
    mean_sq: tuple[float, ...]
    var_sq: tuple[float, ...]
    fitted_rows: int = 0
    metric: str = "rmse"

    def estimate(self, outputs: np.ndarray, draws: int = DRAWS, seed: int = 0, min_rows: int = 30) -> Estimate:
        value = np.asarray(outputs, dtype=float)
        value = value[np.isfinite(value)]
        n = len(value)
        if (few := _too_few(self.metric, n, min_rows)) is not None:
            return few
        b = np.searchsorted(np.asarray(self.edges), value, side="right")
        var_sq = np.asarray(self.var_sq)
        mse = float(np.mean(np.asarray(self.mean_sq)[b]))
        # the rows' own noise, plus the map's: each bin's mean from its share of the holdout rows
        share = np.bincount(b, minlength=len(var_sq)) / n
        per_bin = self.fitted_rows / len(var_sq) if self.fitted_rows else math.inf
        se = math.sqrt(float(np.sum(var_sq[b])) / n**2 + float(np.sum(share**2 * var_sq)) / per_bin)
        z = NormalDist().inv_cdf(1 - (1 - CONFIDENCE) / 2)
        low, high = max(mse - z * se, 0.0), mse + z * se
        return Estimate(self.metric, math.sqrt(mse), math.sqrt(low), math.sqrt(high), n)

    def to_dict(self) -> dict[str, Any]:
        error_map = {"edges": list(self.edges), "mean_sq": list(self.mean_sq), "var_sq": list(self.var_sq)}
        return {"error_map": error_map, "fitted_rows": self.fitted_rows}

    def calibration_check(self, outputs: np.ndarray, y: np.ndarray) -> CalibrationCheck:
        """Observed vs expected squared error per bin of the map."""
        value = np.asarray(outputs, dtype=float)
        sq = (np.asarray(y, dtype=float) - value) ** 2
        n = len(value)
        if n < 30:
            return CalibrationCheck(math.nan, 0, 1.0, n, f"{n} labelled rows, fewer than 30")
        b = np.searchsorted(np.asarray(self.edges), value, side="right")
        per_bin = max((self.fitted_rows or 10**12) / len(self.mean_sq), 1.0)
        obs, exp, var = [], [], []
        for i in np.unique(b):
            k = int((b == i).sum())
            obs.append(float(sq[b == i].sum()))
            exp.append(k * self.mean_sq[i])
            var.append(k * self.var_sq[i] + k * k * self.var_sq[i] / per_bin)
        return _chi2(obs, exp, var, n)


def fit_error_map(
    y: np.ndarray, value: np.ndarray, max_bins: int = 20, min_rows_per_bin: int = 30
) -> RegressionEstimator:
    """Quantile bins of the predicted value (at most `max_bins`, each with >= `min_rows_per_bin` rows where the
    holdout allows), each with the mean and variance of its rows' squared error."""
    value = np.asarray(value, dtype=float)
    sq = (np.asarray(y, dtype=float) - value) ** 2
    bins = int(max(1, min(max_bins, len(value) // min_rows_per_bin)))
    edges = np.unique(np.quantile(value, np.linspace(0, 1, bins + 1)[1:-1])) if bins > 1 else np.array([])
    b = np.searchsorted(edges, value, side="right")
    mean = [float(sq[b == i].mean()) if np.any(b == i) else float(sq.mean()) for i in range(len(edges) + 1)]
    var = [float(sq[b == i].var()) if np.sum(b == i) > 1 else float(sq.var()) for i in range(len(edges) + 1)]
    return RegressionEstimator(tuple(map(float, edges)), tuple(mean), tuple(var), len(value))


def fit_estimator_for(task: str, y: np.ndarray, outputs: np.ndarray) -> Estimator:
    """The task's estimator fitted on holdout truth `y` (class codes 0..k-1, or values) and the model's outputs."""
    if task == "binary":
        return BinaryEstimator(fit_calibration(y, outputs), len(y), auc_se(y, outputs))
    if task == "multiclass":
        proba = np.asarray(outputs, dtype=float)
        y = np.asarray(y)
        k = proba.shape[1]
        maps = tuple(fit_calibration(y == c, proba[:, c]) for c in range(k))
        se = float(np.mean([auc_se(y == c, proba[:, c]) for c in range(k)]))  # as if the classes' errors moved together
        return MulticlassEstimator(maps, len(y), se)
    if task == "regression":
        return fit_error_map(y, outputs)
    raise ValueError(f"no estimator for task {task!r}")


def estimator_from_dict(body: dict[str, Any]) -> Estimator:
    """The estimator a release's estimator.json describes (ValueError when it is malformed)."""
    rows = int(body.get("fitted_rows") or 0)
    if body.get("calibration"):
        se = float(body.get("map_se") or 0.0)
        return BinaryEstimator(Calibration.from_dict(body["calibration"]), rows, se)
    if body.get("calibrations"):
        maps = tuple(Calibration.from_dict(c) for c in body["calibrations"])
        return MulticlassEstimator(maps, rows, float(body.get("map_se") or 0.0))
    if body.get("error_map"):
        m = body["error_map"]
        edges, mean, var = m.get("edges"), m.get("mean_sq"), m.get("var_sq")
        if not isinstance(edges, list) or not isinstance(mean, list) or not isinstance(var, list):
            raise ValueError("an error map needs lists edges, mean_sq and var_sq")
        if len(mean) != len(edges) + 1 or len(var) != len(mean):
            raise ValueError("an error map needs one mean_sq and var_sq per bin (len(edges) + 1)")
        return RegressionEstimator(tuple(map(float, edges)), tuple(map(float, mean)), tuple(map(float, var)), rows)
    raise ValueError("estimator.json holds no calibration, calibrations or error_map")
