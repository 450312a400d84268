"""Pictures of a version (issue 35), drawn from numbers the pipeline already computed: the holdout outputs the
gate scored (the challenger's and the baseline's), the gate's verdict, the live metrics and drift per window.

Each function returns a Plot: the PNG (matplotlib's Agg canvas on a Figure of its own: no pyplot, no global
state, safe in any thread) and the numbers it drew, so a test or the report reads back exactly what is shown.
Curves are thinned to at most MAX_POINTS points and scatter plots sample at most MAX_SCATTER rows (seeded), so
a picture costs the same at 1M rows as at 1,000.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

WIDTH_IN, HEIGHT_IN, DPI = 6.4, 4.8, 100  # 640 x 480 pixels
MAX_POINTS = 1_000
MAX_SCATTER = 5_000
CHALLENGER, CHAMPION, FAIL, PASS, GREY = "#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#7f7f7f"


@dataclass(frozen=True)
class Plot:
    """One picture: its file stem (`roc` -> plots/roc.png), a title, the PNG bytes and the numbers drawn."""

    name: str
    title: str
    png: bytes
    data: dict[str, Any] = field(default_factory=dict)


def _figure(rows: int = 1, cols: int = 1, height: float = HEIGHT_IN, width: float = WIDTH_IN) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_POINTS points of a curve, the first and last kept."""
    if len(x) <= MAX_POINTS:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, MAX_POINTS).round().astype(int))
    return x[idx], y[idx]


def _sample(n: int, seed: int = 0) -> np.ndarray:
    """Row indices of a seeded sample of at most MAX_SCATTER of n rows (all of them when fewer)."""
    if n <= MAX_SCATTER:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_SCATTER, replace=False))


def _models(
    challenger: np.ndarray, champion: np.ndarray | None, names: tuple[str, str]
) -> list[tuple[str, Any, str, str]]:
    """(name, outputs, colour, line style) per model, the champion first so the challenger is drawn on top of it,
    dashed: two models that answer alike still show as two lines."""
    if champion is None:
        return [(names[0], challenger, CHALLENGER, "-")]
    return [(names[1], champion, CHAMPION, "-"), (names[0], challenger, CHALLENGER, "--")]


# -- binary ------------------------------------------------------------------------------------------------
def roc(
    y: np.ndarray,
    p1: np.ndarray,
    champion: np.ndarray | None = None,
    names: tuple[str, str] = ("challenger", "champion"),
) -> Plot:
    """ROC curves of the challenger (and the champion, same holdout, same axes) with each AUC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = _figure()
    data: dict[str, Any] = {}
    for name, scores, color, style in _models(p1, champion, names):
        fpr, tpr, _ = roc_curve(y, scores)
        auc = float(roc_auc_score(y, scores))
        fpr, tpr = _thin(fpr, tpr)
        ax[0, 0].plot(fpr, tpr, color=color, linestyle=style, label=f"{name} (AUC {auc:.4f})")
        data[name] = {"auc": auc, "fpr": fpr.tolist(), "tpr": tpr.tolist()}
    ax[0, 0].plot([0, 1], [0, 1], color=GREY, linestyle=":", label="chance")
    ax[0, 0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on the gate's holdout")
    ax[0, 0].legend(loc="lower right")
    return Plot("roc", "ROC curve", _png(fig), data)


def precision_recall(
    y: np.ndarray,
    p1: np.ndarray,
    champion: np.ndarray | None = None,
    names: tuple[str, str] = ("challenger", "champion"),
) -> Plot:
    """Precision-recall curves with each average precision, and the positive rate as the no-skill line."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = _figure()
    data: dict[str, Any] = {"positive_rate": float(np.mean(y))}
    for name, scores, color, style in _models(p1, champion, names):
        precision, recall, _ = precision_recall_curve(y, scores)
        ap = float(average_precision_score(y, scores))
        recall, precision = _thin(recall, precision)
        ax[0, 0].plot(recall, precision, color=color, linestyle=style, label=f"{name} (AP {ap:.4f})")
        data[name] = {"average_precision": ap, "recall": recall.tolist(), "precision": precision.tolist()}
    ax[0, 0].axhline(data["positive_rate"], color=GREY, linestyle=":", label="no skill")
    ax[0, 0].set(xlabel="recall", ylabel="precision", title="Precision-recall on the gate's holdout", ylim=(0, 1.02))
    ax[0, 0].legend(loc="upper right")
    return Plot("precision_recall", "Precision-recall curve", _png(fig), data)


def calibration(
    y: np.ndarray,
    p1: np.ndarray,
    champion: np.ndarray | None = None,
    names: tuple[str, str] = ("challenger", "champion"),
    bins: int = 10,
) -> Plot:
    """Reliability curve (mean predicted vs observed positive rate per score bin) above the score histogram."""
    from sklearn.calibration import calibration_curve

    fig, ax = _figure(2, 1, height=6.4)
    top, bottom = ax[0, 0], ax[1, 0]
    top.plot([0, 1], [0, 1], color=GREY, linestyle=":", label="perfectly calibrated")
    data: dict[str, Any] = {}
    edges = np.linspace(0, 1, 41)
    for name, scores, color, style in _models(p1, champion, names):
        observed, predicted = calibration_curve(y, scores, n_bins=bins, strategy="uniform")
        top.plot(predicted, observed, marker="o", color=color, linestyle=style, label=name)
        counts, _ = np.histogram(scores, bins=edges)
        bottom.stairs(counts, edges, color=color, linestyle=style, label=name)
        data[name] = {"predicted": predicted.tolist(), "observed": observed.tolist(), "histogram": counts.tolist()}
    data["histogram_edges"] = edges.tolist()
    top.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Calibration", xlim=(0, 1))
    top.legend(loc="upper left")
    bottom.set(xlabel="score", ylabel="rows", title="Score distribution on the holdout", xlim=(0, 1))
    bottom.legend(loc="upper right")
    return Plot("calibration", "Calibration and score histogram", _png(fig), data)


# -- multiclass --------------------------------------------------------------------------------------------
def confusion(y: np.ndarray, proba: np.ndarray, labels: Sequence[Any]) -> Plot:
    """Confusion matrix of the arg-max decision: counts, and normalised by the true class (rows sum to 1)."""
    k = len(labels)
    decided = np.asarray(proba).argmax(axis=1)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (np.asarray(y, dtype=np.int64), decided), 1)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros((k, k)), where=totals > 0)
    fig, ax = _figure(1, 2, width=11, height=4.8)
    names = [_text(v) for v in labels]
    for axis, matrix, title, fmt in ((ax[0, 0], counts, "counts", "d"), (ax[0, 1], normalised, "share of true", ".2f")):
        axis.imshow(matrix, cmap="Blues")
        axis.set(xticks=range(k), yticks=range(k), xticklabels=names, yticklabels=names)
        axis.set(xlabel="predicted class", ylabel="true class", title=f"Confusion matrix ({title})")
        peak = matrix.max() if matrix.size else 0
        for i in range(k):
            for j in range(k):
                value = format(matrix[i, j], fmt)
                axis.text(j, i, value, ha="center", va="center", color="white" if matrix[i, j] > peak / 2 else "black")
    data = {"labels": names, "counts": counts.tolist(), "normalised": normalised.tolist()}
    return Plot("confusion_matrix", "Confusion matrix", _png(fig), data)


def roc_per_class(y: np.ndarray, proba: np.ndarray, labels: Sequence[Any]) -> Plot:
    """One-vs-rest ROC curve per class, each with its AUC (a class absent from the holdout is said, not drawn)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = _figure()
    data: dict[str, Any] = {}
    y = np.asarray(y)
    for code, label in enumerate(labels):
        truth = (y == code).astype(int)
        if truth.min() == truth.max():
            data[str(label)] = {"auc": None, "why": "only one side of this class in the holdout"}
            continue
        fpr, tpr, _ = roc_curve(truth, proba[:, code])
        auc = float(roc_auc_score(truth, proba[:, code]))
        fpr, tpr = _thin(fpr, tpr)
        ax[0, 0].plot(fpr, tpr, label=f"{_text(label)} vs rest (AUC {auc:.4f})")
        data[str(label)] = {"auc": auc, "fpr": fpr.tolist(), "tpr": tpr.tolist()}
    ax[0, 0].plot([0, 1], [0, 1], color=GREY, linestyle=":")
    ax[0, 0].set(xlabel="false positive rate", ylabel="true positive rate", title="One-vs-rest ROC per class")
    ax[0, 0].legend(loc="lower right", fontsize="small")
    return Plot("roc_per_class", "One-vs-rest ROC per class", _png(fig), data)


# -- regression --------------------------------------------------------------------------------------------
def predicted_vs_actual(y: np.ndarray, predicted: np.ndarray) -> Plot:
    """Predicted against actual values (a seeded sample of rows) with the identity line."""
    idx = _sample(len(y))
    fig, ax = _figure()
    ax[0, 0].scatter(y[idx], predicted[idx], s=6, alpha=0.4, color=CHALLENGER)
    low, high = float(min(y.min(), predicted.min())), float(max(y.max(), predicted.max()))
    ax[0, 0].plot([low, high], [low, high], color=GREY, linestyle=":", label="predicted = actual")
    ax[0, 0].set(xlabel="actual", ylabel="predicted", title=f"Predicted vs actual ({len(idx)} of {len(y)} rows)")
    ax[0, 0].legend(loc="upper left")
    return Plot("predicted_vs_actual", "Predicted vs actual", _png(fig), {"rows": len(y), "drawn": len(idx)})


def residuals_vs_predicted(y: np.ndarray, predicted: np.ndarray) -> Plot:
    """Residual (actual - predicted) against predicted, a seeded sample of rows, with the zero line."""
    idx = _sample(len(y))
    residual = y - predicted
    fig, ax = _figure()
    ax[0, 0].scatter(predicted[idx], residual[idx], s=6, alpha=0.4, color=CHALLENGER)
    ax[0, 0].axhline(0, color=GREY, linestyle=":")
    ax[0, 0].set(xlabel="predicted", ylabel="actual - predicted", title="Residuals vs predicted")
    data = {"mean_residual": float(residual.mean()), "rows": len(y), "drawn": len(idx)}
    return Plot("residuals_vs_predicted", "Residuals vs predicted", _png(fig), data)


def residual_histogram(y: np.ndarray, predicted: np.ndarray, bins: int = 50) -> Plot:
    """Histogram of residuals (actual - predicted) over every holdout row."""
    residual = y - predicted
    counts, edges = np.histogram(residual, bins=bins)
    fig, ax = _figure()
    ax[0, 0].stairs(counts, edges, fill=True, color=CHALLENGER, alpha=0.7)
    ax[0, 0].axvline(0, color=GREY, linestyle=":")
    ax[0, 0].set(xlabel="actual - predicted", ylabel="rows", title="Residual distribution")
    return Plot(
        "residual_histogram", "Residual histogram", _png(fig), {"counts": counts.tolist(), "edges": edges.tolist()}
    )


def holdout_plots(
    task: str,
    y: np.ndarray,
    outputs: np.ndarray,
    champion: np.ndarray | None = None,
    labels: Sequence[Any] = (),
    names: tuple[str, str] = ("challenger", "champion"),
) -> list[Plot]:
    """The pictures of a version's holdout for its task type (binary: ROC, precision-recall, calibration with the
    champion on the same axes when there is one; multiclass: confusion matrix, ROC per class; regression:
    predicted vs actual, residuals vs predicted, residual histogram)."""
    y = np.asarray(y)
    if task == "binary":
        return [
            roc(y, outputs, champion, names),
            precision_recall(y, outputs, champion, names),
            calibration(y, outputs, champion, names),
        ]
    if task == "multiclass":
        return [confusion(y, outputs, labels), roc_per_class(y, outputs, labels)]
    y, outputs = y.astype(float), np.asarray(outputs, dtype=float)
    return [predicted_vs_actual(y, outputs), residuals_vs_predicted(y, outputs), residual_histogram(y, outputs)]


# -- the gate ----------------------------------------------------------------------------------------------
def forest(checks: Sequence[Any], metric: str, title: str = "Gate: challenger minus champion") -> Plot:
    """One row per compared scope (overall first, then each segment): the improvement in the primary metric
    (positive = challenger better) with its confidence interval, the non-inferiority margin as a line at
    -margin, failing scopes in red and scopes too small to gate listed grey without an interval. `checks` are
    tasks.gates.Check values (any object with scope, check, status, diff, ci_low, ci_high, threshold, n)."""
    rows = [c for c in checks if str(c.check).endswith(("_non_inferiority", "_segment_harm"))]
    fig, ax = _figure(height=max(2.4, 0.9 + 0.32 * len(rows)), width=7.5)
    axis = ax[0, 0]
    data: dict[str, Any] = {"metric": metric, "rows": []}
    margin = None
    for i, c in enumerate(rows):
        y = len(rows) - 1 - i
        margin = float(c.threshold)
        row = {
            "scope": c.scope,
            "status": c.status,
            "n": int(c.n),
            "diff": c.diff,
            "ci_low": c.ci_low,
            "ci_high": c.ci_high,
        }
        data["rows"].append(row)
        if c.diff is None or c.ci_low is None or c.ci_high is None or np.isnan(c.diff):
            axis.text(0, y, "not gated", color=GREY, va="center", fontsize="small")
            continue
        color = FAIL if c.status == "fail" else PASS
        axis.errorbar(
            c.diff,
            y,
            xerr=[[c.diff - c.ci_low], [c.ci_high - c.diff]],
            fmt="s" if c.scope == "overall" else "o",
            color=color,
            capsize=3,
        )
    data["margin_line"] = margin
    axis.axvline(0, color=GREY, linewidth=0.8)
    if margin is not None:
        axis.axvline(margin, color=FAIL, linestyle="--")
        title = f"{title}\n(dashed red line: the non-inferiority margin, {margin:+g})"
    labels = [f"{_short(c.scope)} (n={c.n})" + ("  FAIL" if c.status == "fail" else "") for c in rows]
    axis.set_yticks(range(len(rows)), labels[::-1], fontsize="small")
    axis.set_ylim(-0.6, len(rows) - 0.4)
    axis.set(xlabel=f"improvement in {metric} (positive = challenger better), with its interval", title=title)
    return Plot("gate_forest", "Gate forest plot", _png(fig), data)


def _short(text: str, width: int = 32) -> str:
    """A label cut to `width` characters (an ellipsis says it was cut); the data keeps the whole name."""
    return _text(text if len(text) <= width else text[: width - 1] + "\u2026")


def _text(value: Any) -> str:
    """A value from the data as literal text: matplotlib reads text between two `$` as math (a segment or class
    named "$5 plan" or "a$b$c" would be typeset, or fail to parse and lose the picture)."""
    return str(value).replace("$", r"\$")


def score_distributions(challenger: np.ndarray, champion: np.ndarray | None, names: tuple[str, str]) -> Plot:
    """The two models' score (or value) distributions on the same rows, same bins."""
    challenger = np.asarray(challenger, dtype=float).ravel()
    values = challenger if champion is None else np.concatenate([challenger, np.asarray(champion, float).ravel()])
    edges = np.histogram_bin_edges(values[np.isfinite(values)], bins=40)
    fig, ax = _figure()
    data: dict[str, Any] = {"edges": edges.tolist()}
    for name, scores, color, style in _models(challenger, champion, names):
        counts, _ = np.histogram(np.asarray(scores, float).ravel(), bins=edges)
        ax[0, 0].stairs(counts, edges, color=color, label=name, linestyle=style, linewidth=1.6)
        data[name] = counts.tolist()
    ax[0, 0].set(xlabel="score", ylabel="rows", title="Score distributions on the same rows")
    ax[0, 0].legend()
    return Plot("score_distributions", "Score distributions", _png(fig), data)


# -- live health -------------------------------------------------------------------------------------------
def live_series(
    metric: str,
    series: dict[str, list[tuple[float, float]]],
    lines: dict[str, float],
    events: Sequence[tuple[float, str]] = (),
) -> Plot:
    """The live primary metric per window, one line per model version (`series`: name -> [(window start epoch,
    value)]), horizontal reference lines (`lines`: the holdout value, SLO thresholds) and ledger events marked
    as vertical lines (`events`: (epoch, label), e.g. a promotion or a rollback)."""
    import datetime as dt

    fig, ax = _figure(width=8)
    axis = ax[0, 0]

    def when(epoch: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(epoch, dt.UTC)

    for name, points in series.items():
        if points:
            xs, ys = zip(*sorted(points), strict=True)
            dashed = "estimated" in name  # an estimate before labels, next to the realized values
            axis.plot([when(x) for x in xs], ys, marker="x" if dashed else "o", ls="--" if dashed else "-", label=name)
    for i, (name, value) in enumerate(lines.items()):
        axis.axhline(value, linestyle="--" if i else ":", color=(GREY, "#bcbd22", FAIL, "#9467bd")[i % 4], label=name)
    for epoch, label in events:
        axis.axvline(when(epoch), color="#8c564b", linewidth=0.8)
        axis.annotate(label, (when(epoch), 1), xycoords=("data", "axes fraction"), rotation=90, va="top", fontsize=7)
    axis.set(xlabel="window start (UTC)", ylabel=metric, title=f"Live {metric} per window")
    axis.legend(fontsize="small")
    fig.autofmt_xdate()
    data = {"series": {k: [list(p) for p in v] for k, v in series.items()}, "lines": lines, "events": list(events)}
    return Plot("live_metric", f"Live {metric}", _png(fig), data)


def drift_per_feature(statistics: dict[str, float], thresholds: dict[str, float], method: str) -> Plot:
    """Each feature's drift statistic for one window as a bar against its threshold (drifted bars red)."""
    names = list(statistics)
    values = [statistics[n] for n in names]
    fig, ax = _figure(height=max(2.4, 0.9 + 0.28 * len(names)), width=7)
    axis = ax[0, 0]
    colors = [FAIL if statistics[n] > thresholds.get(n, np.inf) else CHALLENGER for n in names]
    axis.barh(range(len(names)), values, color=colors)
    for i, n in enumerate(names):
        if n in thresholds:
            axis.plot([thresholds[n]] * 2, [i - 0.4, i + 0.4], color=GREY, linestyle="--")
    axis.set_yticks(range(len(names)), [_text(n) for n in names], fontsize="small")
    axis.invert_yaxis()
    axis.set(xlabel=f"{method} (dashed: the feature's threshold; red: drifted)", title="Drift per feature")
    data = {"statistics": statistics, "thresholds": thresholds}
    return Plot("drift_per_feature", "Drift per feature", _png(fig), data)


# -- rollout phases ----------------------------------------------------------------------------------------
def phase_checks(checks: Sequence[Any], phase: str) -> Plot:
    """A rollout phase's comparisons, one panel per check: the measured value as a bar against its limit (dashed),
    red when the check failed. `checks` are tasks.gates.Check values of a phase verdict (challenger = the value,
    threshold = the limit)."""
    fig, ax = _figure(len(checks) or 1, 1, height=max(2.0, 1.1 * len(checks)))
    data: dict[str, Any] = {"phase": phase, "rows": []}
    for i, c in enumerate(checks):
        axis = ax[i, 0]
        value = float(c.challenger)
        limit = float(c.threshold)
        data["rows"].append({"check": c.check, "value": value, "limit": limit, "status": c.status, "n": int(c.n)})
        drawn = 0.0 if np.isnan(value) else value
        axis.barh([0], [drawn], color=FAIL if c.status == "fail" else PASS, height=0.5)
        axis.axvline(limit, color=GREY, linestyle="--")
        shown = "n/a" if np.isnan(value) else f"{value:.4g}"
        axis.set_yticks([0], [c.check])
        axis.set_xlim(0, max(drawn, limit) * 1.25 or 1.0)
        axis.set_title(f"{c.check}: {shown} (limit {limit:g}, {c.status})", fontsize="small")
    fig.suptitle(f"{phase}: the challenger's checks (dashed: the limit)")
    return Plot(f"{phase}_checks", f"{phase} checks", _png(fig), data)
