"""Estimated performance before the labels arrive (issue 36), for binary models: a calibration map of the model's
scores fitted on the gate's holdout, and from it the expected AUC of any set of logged predictions, with an
interval.

The method (confidence-based estimation, as NannyML's CBPE): with a calibrated probability q_i for each logged
score s_i, the labels are modelled as independent draws y_i ~ Bernoulli(q_i). The estimate is the AUC those
labels give in expectation (the expected concordant positive-negative pairs over the expected pairs), and the
interval is the 2.5-97.5 percentiles of the AUC over `draws` simulated label sets (each draw costs one pass over
the rows with the scores' ranks computed once; no draws x rows matrix is ever built).

What it can and cannot see: a shift in P(X) moves the scores, and the estimate follows it; a change of P(Y|X)
(concept shift) leaves the scores, the calibration map and so the estimate unchanged: the estimate stays confident
and wrong. That is why estimates are checked against the labels when they arrive (tasks/estimation.py).

The map is isotonic regression's step function (its breakpoints, stored as JSON in the release: no pickle),
applied by linear interpolation and clipped to [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

METHOD = "isotonic calibration + expected AUC (CBPE)"
DRAWS = 200
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Calibration:
    """A monotone map from a model score to the probability of the positive class (isotonic breakpoints)."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """The calibrated probability of each score."""
        return np.clip(np.interp(np.asarray(scores, dtype=float), self.x, self.y), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Calibration:
        x, y = body.get("x"), body.get("y")
        if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y) or not x:
            raise ValueError("a calibration map needs equal, non-empty lists x and y")
        return cls(tuple(float(v) for v in x), tuple(float(v) for v in y))


def fit_calibration(y: np.ndarray, scores: np.ndarray) -> Calibration:
    """Isotonic regression of the labels on the scores (the step function's breakpoints)."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    iso.fit(np.asarray(scores, dtype=float), np.asarray(y, dtype=float))
    return Calibration(tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)))


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


def simulated_aucs(q: np.ndarray, scores: np.ndarray, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """The AUC of `draws` label sets drawn from Bernoulli(q) for these scores (NaN for a draw with one class)."""
    ranks = rankdata(scores)  # average ranks: ties count a half, as in the AUC
    rng = np.random.default_rng(seed)
    out = np.empty(draws)
    for d in range(draws):  # one pass over the rows per draw: memory stays one row vector
        y = rng.random(len(q)) < q
        n1 = int(y.sum())
        n0 = len(q) - n1
        out[d] = (ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0) if n1 and n0 else np.nan
    return out


def estimate_auc(
    calibration: Calibration, scores: np.ndarray, draws: int = DRAWS, seed: int = 0, min_rows: int = 30
) -> Estimate:
    """The expected AUC of these logged scores under the calibration map, with its 95% interval."""
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
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(sims, [tail, 100 - tail])
    return Estimate("auc", float(value), float(min(low, value)), float(max(high, value)), n)
