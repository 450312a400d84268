"""The bundled dataset: deterministic synthetic subscription churn, with later "production" periods.

Pure functions of (GenerationConfig, scenario): the same inputs give byte-identical Parquet on any machine
with the locked dependencies (floats are rounded so last-ulp differences between CPUs cannot leak in).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from tollgate.config import SCENARIOS, GenerationConfig

Scenario = Literal["none", "covariate_drift", "concept_drift", "segment_shift", "faults"]
__all__ = ["SCENARIOS", "generate", "write_parquet"]

REGIONS = ["north", "south", "east", "west", "central"]
PLANS = ["basic", "standard", "premium"]
TIERS = ["bronze", "silver", "gold"]
PAYMENTS = ["card", "bank_transfer", "paypal", "invoice"]
PERIOD_DAYS = 30


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _features(rng: np.random.Generator, n: int, scenario: str) -> pd.DataFrame:
    """Draw the feature columns (with realistic skew, correlation and nulls)."""
    region = rng.choice(REGIONS, size=n, p=[0.36, 0.26, 0.17, 0.12, 0.09])
    plan = rng.choice(PLANS, size=n, p=[0.5, 0.32, 0.18])
    tenure = np.clip(np.round(rng.gamma(shape=1.4, scale=17.0, size=n)), 0, 240).astype("int64")
    # Loyal, long-tenure customers are more often gold.
    gold_p = np.clip(0.08 + tenure / 160, 0, 0.6)
    u = rng.random(n)
    tier = np.where(u < gold_p, "gold", np.where(u < gold_p + 0.3, "silver", "bronze"))
    payment = rng.choice(PAYMENTS, size=n, p=[0.45, 0.25, 0.2, 0.1])
    autopay = rng.random(n) < np.where(np.isin(payment, ["card", "bank_transfer"]), 0.7, 0.3)
    has_discount = rng.random(n) < 0.2
    base = pd.Series(plan).map({"basic": 35.0, "standard": 65.0, "premium": 110.0}).to_numpy()
    monthly = base * rng.lognormal(0.0, 0.22, size=n) * np.where(has_discount, 0.85, 1.0)
    usage = rng.lognormal(np.log(base / 3.0), 0.6, size=n)
    support = rng.poisson(0.6 + 0.8 * (plan == "basic") + 0.01 * monthly / 10, size=n).astype("int64")
    last_login = rng.exponential(4.0 + 40.0 / (1.0 + usage / 5.0), size=n)

    if scenario == "covariate_drift":  # a price rise and disengagement across the base
        monthly = monthly * 1.35
        # logins rarer and alike (every ~3-5 weeks): the strongest signal of who leaves flattens out, so the model
        # tells churners apart less well although P(churn | inputs) is unchanged (the live AUC falls, and the
        # estimate from the scores alone falls with it)
        last_login = 22.0 + 0.25 * last_login
        usage = usage * 0.55
    elif scenario == "segment_shift":  # only the south region changes
        south = region == "south"
        usage = np.where(south, usage * 0.3, usage)
        support = np.where(south, support + rng.poisson(2.0, size=n), support).astype("int64")

    total = tenure * monthly * rng.uniform(0.9, 1.05, size=n)
    frame = pd.DataFrame(
        {
            "region": region,
            "plan": plan,
            "tier": tier,
            "payment_method": payment,
            "tenure_months": tenure,
            "monthly_charges": np.round(np.clip(monthly, 0, 500), 2),
            "total_charges": np.round(np.clip(total, 0, 200_000), 2),
            "support_calls_90d": np.clip(support, 0, 60),
            "last_login_days": np.round(np.clip(last_login, 0, 365), 2),
            "usage_gb": np.round(np.clip(usage, 0, 5000), 2),
            "autopay": autopay,
            "has_discount": has_discount,
        }
    )
    # Realistic missingness: brand-new customers have no total yet; some logins and usage are unknown.
    frame.loc[(frame["tenure_months"] == 0) | (rng.random(n) < 0.01), "total_charges"] = np.nan
    frame.loc[rng.random(n) < 0.04, "last_login_days"] = np.nan
    frame.loc[rng.random(n) < 0.01, "usage_gb"] = np.nan
    frame.loc[rng.random(n) < 0.005, "monthly_charges"] = np.nan
    return frame


def _label(rng: np.random.Generator, f: pd.DataFrame, scenario: str) -> np.ndarray:
    """Churn from a logistic model of the features; concept drift changes the relation, not the inputs."""
    login = f["last_login_days"].fillna(f["last_login_days"].median()).clip(upper=60).to_numpy()
    usage = np.log1p(f["usage_gb"].fillna(0).to_numpy())
    monthly = f["monthly_charges"].fillna(60).to_numpy()
    support = f["support_calls_90d"].to_numpy()
    region_eff = f["region"].map({"north": 0.0, "south": 0.3, "east": -0.1, "west": 0.2, "central": 0.4}).to_numpy()
    tier_eff = f["tier"].map({"bronze": 0.25, "silver": 0.0, "gold": -0.45}).to_numpy()
    support_eff = np.full(len(f), 0.8)
    login_eff = np.full(len(f), 0.08)
    shift = np.zeros(len(f))
    if scenario == "concept_drift":
        # A new support process: for bronze/silver customers a support call now signals engagement and
        # recent logins stop mattering; gold customers (dedicated account managers) behave as before.
        changed = (f["tier"] != "gold").to_numpy()
        support_eff = np.where(changed, -0.7, support_eff)
        login_eff = np.where(changed, 0.0, login_eff)
        shift = np.where(changed, 1.0, 0.0)  # keeps the churn rate comparable
    if scenario == "segment_shift":
        region_eff = np.where(f["region"].to_numpy() == "south", region_eff + 0.9, region_eff)
    z = (
        -2.2
        + shift
        - 0.045 * f["tenure_months"].to_numpy()
        + 0.012 * (monthly - 60)
        + support_eff * support
        + login_eff * login
        - 0.9 * f["autopay"].to_numpy()
        - 0.3 * f["has_discount"].to_numpy()
        - 0.2 * usage
        + 0.45 * (f["payment_method"] == "invoice").to_numpy()
        + region_eff
        + tier_eff
    )
    return (rng.random(len(f)) < _sigmoid(z)).astype("int64")


def _inject_faults(rng: np.random.Generator, f: pd.DataFrame) -> pd.DataFrame:
    """Data-quality faults a real feed produces: nulls, out-of-range, unseen categories, duplicate ids."""
    n = len(f)
    f = f.copy()
    f.loc[rng.random(n) < 0.15, "monthly_charges"] = np.nan
    neg = rng.random(n) < 0.02
    f.loc[neg, "tenure_months"] = -f.loc[neg, "tenure_months"] - 1
    f["payment_method"] = np.where(rng.random(n) < 0.03, "crypto", f["payment_method"])
    dup_rows = rng.choice(n, size=20, replace=False)
    f.loc[dup_rows[10:], "customer_id"] = f.loc[dup_rows[:10], "customer_id"].to_numpy()
    return f


def generate(gen: GenerationConfig, scenario: str = "none", production: bool = False) -> pd.DataFrame:
    """The training snapshot (production=False) or a later production period under `scenario`."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario '{scenario}', expected one of {', '.join(SCENARIOS)}")
    offset = SCENARIOS.index(scenario) + 1 if production else 0
    rng = np.random.default_rng([gen.seed, offset])
    n = gen.period_rows if production else gen.rows
    start = pd.Timestamp(gen.start)
    days = gen.days
    if production:
        start = start + pd.Timedelta(days=gen.days)
        days = PERIOD_DAYS
    features = _features(rng, n, scenario)
    label = _label(rng, features, scenario)
    seconds = np.sort(rng.integers(0, days * 86400, size=n))
    ids = [f"C{offset * 10_000_000 + i:08d}" for i in range(n)]
    frame = pd.DataFrame({"customer_id": ids, "event_time": start + pd.to_timedelta(seconds, unit="s")})
    frame = pd.concat([frame, features], axis=1)
    frame["churned"] = label
    if scenario == "faults":
        frame = _inject_faults(rng, frame)
    return frame


def write_parquet(frame: pd.DataFrame, path: str) -> None:
    """Write Parquet deterministically (no index, fixed compression) so equal frames give equal bytes."""
    frame.to_parquet(path, index=False, compression="snappy", engine="pyarrow")
