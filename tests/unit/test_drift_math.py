"""Drift statistics (tollgate.stats) against hand-computed values and scipy; the binning convention; the one
`detected` headline of a drift check that the alert and the exit code use."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon as scipy_js
from scipy.stats import ks_2samp, kstwobign

from tasks.actions import drift_alerts
from tasks.drift import DriftAccumulator, DriftCheck, DriftReport, LogWindow
from tasks.profiling import reference_profile
from tests.helpers import bundled_config
from tollgate.release import Release
from tollgate.stats import (
    bin_counts,
    jensen_shannon,
    ks_pvalue,
    ks_statistic,
    proportions,
    psi,
    psi_from_proportions,
    quantile_edges,
)


# -- PSI ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expected", "actual", "value"),
    [
        # (0.25-0.5)*ln(0.25/0.5) + (0.75-0.5)*ln(0.75/0.5) = 0.25*ln 2 + 0.25*ln 1.5
        ([0.5, 0.5], [0.25, 0.75], 0.25 * math.log(2) + 0.25 * math.log(1.5)),
        # an empty reference bin is floored at 1e-4: -0.1*ln(0.8) + (0.1-1e-4)*ln(0.1/1e-4)
        ([0.5, 0.5, 0.0], [0.5, 0.4, 0.1], -0.1 * math.log(0.8) + 0.0999 * math.log(1000)),
        ([0.2, 0.3, 0.5], [0.2, 0.3, 0.5], 0.0),
    ],
)
def test_psi_from_proportions_on_hand_computed_inputs(expected: list[float], actual: list[float], value: float) -> None:
    assert psi_from_proportions(np.array(expected), np.array(actual)) == pytest.approx(value, abs=1e-12)


def test_psi_of_raw_values_bins_on_the_reference_quantiles() -> None:
    # reference 1..8 -> one interior edge at the median 4.5 -> shares (0.5, 0.5); actual -> (0.75, 0.25)
    value = psi(np.arange(1, 9), np.array([1.0, 2.0, 3.0, 6.0]), bins=2)
    assert value == pytest.approx(0.25 * math.log(1.5) + 0.25 * math.log(2), abs=1e-12)
    assert math.isnan(psi(np.array([]), np.array([1.0]), bins=2))


# -- the binning helper -------------------------------------------------------------------------------------
def test_quantile_edges_are_interior_and_merged() -> None:
    assert quantile_edges(np.arange(1, 11), 2).tolist() == [5.5]
    assert quantile_edges(np.array([1.0, 2.0, 3.0, 4.0]), 4).tolist() == [1.75, 2.5, 3.25]
    assert quantile_edges(np.array([0, 0, 0, 0, 1]), 4).tolist() == [0.0]  # duplicate quantiles merged


def test_a_value_on_an_edge_counts_in_the_bin_above_it() -> None:
    edges = np.array([1.0, 2.0])  # bins: (-inf, 1) [1, 2) [2, inf)
    assert bin_counts(edges, np.array([0.5, 1.0, 1.5, 2.0, 2.5])).tolist() == [1, 2, 2]
    assert bin_counts(edges, np.array([])).tolist() == [0, 0, 0]
    assert proportions(np.array([0, 0])).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("n_edges", [0, 1, 19, 64, 65, 99])
def test_bin_counts_equal_a_binary_search_per_value(n_edges: int) -> None:
    """Counting by comparisons gives np.searchsorted's bins exactly: values on an edge go above it, NaN last."""
    rng = np.random.default_rng(n_edges)
    edges = np.linspace(-2, 2, n_edges).round(3)  # both paths: up to 64 edges by comparisons, more by search
    values = np.concatenate([rng.normal(size=5000), edges, edges, [np.nan, np.inf, -np.inf, np.nan]])
    expected = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    assert bin_counts(edges, values).tolist() == expected.tolist()


# -- binned Kolmogorov-Smirnov ------------------------------------------------------------------------------
def test_binned_ks_equals_scipy_when_every_value_has_its_own_bin() -> None:
    rng = np.random.default_rng(3)
    a = rng.choice(6, size=400, p=[0.1, 0.2, 0.3, 0.2, 0.1, 0.1])
    b = rng.choice(6, size=300, p=[0.25, 0.25, 0.2, 0.1, 0.1, 0.1])
    edges = np.arange(1, 6, dtype="float64")  # values 0..5, one per bin
    d = ks_statistic(proportions(bin_counts(edges, a)), proportions(bin_counts(edges, b)))
    assert d == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)
    assert d > 0.05  # the samples differ: a statistic of 0 would not test anything


def test_binned_ks_never_exceeds_the_exact_statistic_on_continuous_data() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=1000), rng.normal(0.3, 1.2, size=800)
    edges = quantile_edges(a, 10)
    d = ks_statistic(proportions(bin_counts(edges, a)), proportions(bin_counts(edges, b)))
    exact = ks_2samp(a, b).statistic
    assert 0.8 * exact <= d <= exact + 1e-12


@pytest.mark.parametrize(("d", "n", "m"), [(0.0, 100, 100), (0.05, 400, 300), (0.1, 2000, 1500), (0.3, 50, 60)])
def test_ks_pvalue_is_the_kolmogorov_limit_at_the_effective_sample_size(d: float, n: int, m: int) -> None:
    assert ks_pvalue(d, n, m) == pytest.approx(kstwobign.sf(d * math.sqrt(n * m / (n + m))), rel=1e-9)


def test_ks_pvalue_is_close_to_scipy_asymptotic_on_large_samples() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=2000), rng.normal(0.1, 1, size=1500)
    result = ks_2samp(a, b, method="asymp")
    assert ks_pvalue(result.statistic, len(a), len(b)) == pytest.approx(result.pvalue, rel=0.15)


# -- Jensen-Shannon -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("p", "q"),
    [
        ([0.1, 0.4, 0.5], [0.3, 0.3, 0.4]),
        ([0.5, 0.5, 0.0], [0.0, 0.2, 0.8]),  # zeros on either side
        ([3, 1, 0, 6], [1, 1, 1, 1]),  # counts: normalised first, like scipy
    ],
)
def test_jensen_shannon_matches_scipy(p: list[float], q: list[float]) -> None:
    ours = jensen_shannon(np.array(p), np.array(q))
    assert ours == pytest.approx(float(scipy_js(p, q)), abs=1e-12)
    assert ours > 0.05


def test_jensen_shannon_bounds() -> None:
    assert jensen_shannon(np.array([0.2, 0.8]), np.array([2, 8])) == pytest.approx(0.0, abs=1e-12)
    assert jensen_shannon(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(math.sqrt(math.log(2)))
    assert jensen_shannon(np.array([0.5, 0.5]), np.array([0.0, 0.0])) == 0.0  # no current data


# -- the accumulator and the headline -----------------------------------------------------------------------
def _profile_and_frames() -> tuple[dict, pd.DataFrame, pd.DataFrame]:  # type: ignore[type-arg]
    cfg = bundled_config()
    rng = np.random.default_rng(6)
    n = 600
    ref = pd.DataFrame(
        {c: rng.normal(10, 2, n) for c in cfg.features.numeric}
        | {c: rng.choice(cfg.dataset.columns[c].categories or ["x"], n) for c in cfg.features.categorical}
        | {c: rng.random(n) < 0.5 for c in cfg.features.boolean}
    )
    scores = rng.random(n)
    profile = reference_profile(ref, cfg.features, scores, 10)
    log = ref.add_prefix("f.").assign(score=scores)
    shifted = log.copy()
    for c in cfg.features.numeric:
        shifted[f"f.{c}"] = shifted[f"f.{c}"] + 5
    return profile, log, shifted


def test_accumulator_finds_no_drift_on_its_reference_and_drift_on_a_shift() -> None:
    mon = bundled_config().monitoring
    profile, log, shifted = _profile_and_frames()
    same, moved = DriftAccumulator(profile), DriftAccumulator(profile)
    for part in np.array_split(np.arange(len(log)), 4):  # streamed in chunks
        same.add(log.iloc[part])
        moved.add(shifted.iloc[part])
    calm, drifted = same.report("1", mon), moved.report("1", mon)
    assert calm.rows == len(log) and not calm.detected and calm.drifted == []
    assert drifted.detected and set(drifted.drifted) == set(bundled_config().features.numeric)
    ks = moved.report("1", mon.model_copy(update={"numeric_method": "ks"}))
    assert all(f.method == "ks" and f.statistic < mon.ks_pvalue for f in ks.features if f.kind == "numeric")


def _report(detected: bool) -> DriftReport:
    return DriftReport("7", 100, [], None, 0.5 if detected else 0.0, detected)


@pytest.mark.parametrize(
    ("overall", "segment", "expected"), [(False, False, False), (False, True, True), (True, False, True)]
)
def test_one_headline_for_the_check_the_alert_and_the_exit_code(overall: bool, segment: bool, expected: bool) -> None:
    """A segment-only drift makes the check's `detected` true, and that is exactly when an alert is raised."""
    check = DriftCheck(_report(overall), {"region=south": _report(segment)}, LogWindow(0.0, 86400.0))
    cfg = bundled_config()
    release = Release(cfg.project.registered_model, "7", "run", "Production", {}, cfg, "http://unused")
    assert check.detected is expected and check.summary()["detected"] is expected
    assert check.summary()["segments"] == (["region=south"] if segment else [])
    assert len(drift_alerts(release, check, "monitoring-run")) == int(expected)
