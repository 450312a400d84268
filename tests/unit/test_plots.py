"""The release report's pictures (issue 35): each plot of each task type is a PNG of the expected size with
something drawn on it, and the gate's forest plot shows exactly the verdict's numbers."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from tasks import plots
from tasks.gates import decide
from tests.helpers import bundled_config
from tollgate.objective import Objective

RNG = np.random.default_rng(7)


def _image(plot: plots.Plot) -> np.ndarray:
    assert plot.png.startswith(b"\x89PNG\r\n\x1a\n"), plot.name
    rgba = imread(io.BytesIO(plot.png), format="png")
    return (rgba[..., :3].mean(axis=2) * 255).round()  # grey levels 0..255


def _drawn(plot: plots.Plot, size: tuple[int, int] | None = (640, 480)) -> None:
    """The PNG has the figure's size and is not blank: many pixels are neither white nor one flat colour."""
    pixels = _image(plot)
    if size is not None:
        assert (pixels.shape[1], pixels.shape[0]) == size, plot.name
    assert (pixels < 250).mean() > 0.02 and len(np.unique(pixels)) > 20, f"{plot.name} looks blank"


def _binary(n: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = RNG.integers(0, 2, n)
    return y, np.clip(0.35 * y + 0.65 * RNG.random(n), 0, 1), np.clip(0.2 * y + 0.8 * RNG.random(n), 0, 1)


def test_binary_plots_draw_both_models_and_report_their_auc() -> None:
    from sklearn.metrics import roc_auc_score

    y, challenger, champion = _binary()
    roc, pr, cal = plots.holdout_plots("binary", y, challenger, champion, names=("v2", "v1"))
    assert [p.name for p in (roc, pr, cal)] == ["roc", "precision_recall", "calibration"]
    for plot in (roc, pr):
        _drawn(plot)
    _drawn(cal, (640, 640))
    assert roc.data["v2"]["auc"] == pytest.approx(roc_auc_score(y, challenger))
    assert roc.data["v1"]["auc"] == pytest.approx(roc_auc_score(y, champion))
    assert sum(cal.data["v2"]["histogram"]) == len(y)  # every holdout row in the score histogram
    alone = plots.roc(y, challenger)
    assert set(alone.data) == {"challenger"}  # no champion: one curve


def test_a_curve_of_200k_rows_is_thinned_not_drawn_point_by_point() -> None:
    y = RNG.integers(0, 2, 200_000)
    plot = plots.roc(y, RNG.random(len(y)))
    assert len(plot.data["challenger"]["fpr"]) <= plots.MAX_POINTS


def test_multiclass_plots_count_every_row_and_normalise_by_true_class() -> None:
    y = RNG.integers(0, 3, 900)
    proba = RNG.dirichlet(np.ones(3), 900)
    proba[np.arange(900), y] += 0.5
    confusion, per_class = plots.holdout_plots(
        "multiclass", y, proba / proba.sum(1, keepdims=True), labels=["a", "b", "c"]
    )
    _drawn(confusion, (1100, 480))
    _drawn(per_class)
    counts = np.array(confusion.data["counts"])
    assert counts.sum() == 900 and counts.trace() > 600
    np.testing.assert_allclose(np.array(confusion.data["normalised"]).sum(axis=1), 1.0)
    assert set(per_class.data) == {"a", "b", "c"} and all(v["auc"] > 0.5 for v in per_class.data.values())


def test_regression_plots_sample_the_scatter_and_histogram_every_residual() -> None:
    y = RNG.normal(size=20_000)
    predicted = y + RNG.normal(scale=0.3, size=y.size)
    scatter, residuals, histogram = plots.holdout_plots("regression", y, predicted)
    for plot in (scatter, residuals, histogram):
        _drawn(plot)
    assert scatter.data == {"rows": 20_000, "drawn": plots.MAX_SCATTER}
    assert sum(histogram.data["counts"]) == 20_000
    assert residuals.data["mean_residual"] == pytest.approx(float(np.mean(y - predicted)))


def test_the_forest_plot_shows_the_verdicts_own_intervals() -> None:
    """A segment where the challenger is worse (red), one where it is better, one too small to gate (no interval)."""
    tiers = np.array(["gold"] * 400 + ["silver"] * 2000 + ["tin"] * 20)
    y = (RNG.random(len(tiers)) < 0.3).astype("int64")
    champion = np.clip(y * 0.4 + RNG.random(len(y)) * 0.6, 0, 1)
    better = np.clip(y * 0.7 + RNG.random(len(y)) * 0.3, 0, 1)
    challenger = np.where(tiers == "gold", np.clip(y * 0.05 + RNG.random(len(y)) * 0.95, 0, 1), better)
    holdout = pd.DataFrame({"tier": tiers, "region": "north", "plan": "basic", "churned": y})
    cfg = bundled_config()
    ds = cfg.dataset.model_copy(update={"segments": ["tier"]})
    overall = {"auc": 0.9, "log_loss": 0.3, "n": len(y)}
    verdict = decide(
        holdout, challenger, overall, ds, cfg.gates, Objective("binary"), 1, champion, "Production v1", "1"
    )
    plot = plots.forest(verdict.checks, "auc")
    _drawn(plot, None)
    compared = [c for c in verdict.checks if c.check.endswith(("_non_inferiority", "_segment_harm"))]
    assert [r["scope"] for r in plot.data["rows"]] == [c.scope for c in compared]
    for row, check in zip(plot.data["rows"], compared, strict=True):
        assert (row["diff"], row["ci_low"], row["ci_high"], row["status"]) == (
            check.diff,
            check.ci_low,
            check.ci_high,
            check.status,
        )
    assert plot.data["margin_line"] == -cfg.gates.non_inferiority_margin
    statuses = {r["scope"]: r["status"] for r in plot.data["rows"]}
    assert statuses == {
        "overall": statuses["overall"],
        "tier=gold": "fail",
        "tier=silver": "pass",
        "tier=tin": "not_gated",
    }


def test_live_and_drift_pictures_carry_their_series_and_thresholds() -> None:
    series = {"v1 champion": [(1.7e9, 0.80), (1.7e9 + 3600, 0.74)], "v2 canary": [(1.7e9 + 3600, 0.82)]}
    live = plots.live_series("auc", series, {"holdout": 0.81, "degraded below": 0.75}, [(1.7e9 + 1800, "v2 promoted")])
    _drawn(live, (800, 480))
    assert live.data["series"]["v1 champion"] == [[1.7e9, 0.80], [1.7e9 + 3600, 0.74]]
    from tasks.pictures import live_plot

    rows = [
        {
            "scope": "overall",
            "window": "w",
            "model_version": "1",
            "role": "champion",
            "start": 1.7e9,
            "end": 1.7e9 + 3600,
            "auc": 0.8,
        }
    ]
    both = live_plot(rows, "auc", {}, [], {"v1 champion (estimated)": [(1.7e9 + 7200, 0.77)]})
    _drawn(both, (800, 480))  # the estimate before labels drawn next to the realized value
    assert both.data["series"] == {"v1 champion": [[1.7e9, 0.8]], "v1 champion (estimated)": [[1.7e9 + 7200, 0.77]]}
    drift = plots.drift_per_feature({"tenure": 0.05, "monthly": 0.41}, {"tenure": 0.2, "monthly": 0.2}, "psi")
    _drawn(drift, None)
    assert drift.data["thresholds"] == {"tenure": 0.2, "monthly": 0.2}


def test_names_from_the_data_are_drawn_as_text_not_math() -> None:
    """Segment and class names are the user's: "$" (mathtext to matplotlib), unicode and punctuation draw as-is."""
    from types import SimpleNamespace

    check = SimpleNamespace(
        scope="plan=$5 \\frac{ a$ b",
        check="auc_segment_harm",
        status="pass",
        n=300,
        diff=0.01,
        ci_low=-0.01,
        ci_high=0.03,
        threshold=-0.02,
    )
    _drawn(plots.forest([check], "auc"), None)
    y = RNG.integers(0, 3, 300)
    labels = ["$5", "São Paulo / Zürich", "50% off + €"]
    confusion, per_class = plots.holdout_plots("multiclass", y, RNG.dirichlet(np.ones(3), 300), labels=labels)
    assert confusion.data["labels"] == ["\\$5", "São Paulo / Zürich", "50% off + €"]
    _drawn(per_class)
