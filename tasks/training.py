"""Training stage: the sklearn Pipeline (feature transforms + estimator) built from config, split and fit.

The transforms live inside the Pipeline, so the artifact that is served runs exactly the training code. The
estimator follows model.task and model.kind: HistGradientBoosting{Classifier,Regressor}, LogisticRegression
(binary, multiclass) or Ridge (regression).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tasks.common import tollgate_task
from tollgate.config import DatasetConfig, FeaturesConfig, ModelConfig, SplitConfig
from tollgate.objective import Objective


def build_estimator(model: ModelConfig) -> Any:
    """The configured stock sklearn estimator for model.task and model.kind, hyperparameters passed through;
    ValueError naming any hyperparameter the estimator does not take."""
    hp = dict(model.hyperparameters)
    regression = model.task == "regression"
    estimator: Any
    if model.kind == "hist_gradient_boosting":
        cls = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        estimator, fixed = cls(random_state=model.seed, early_stopping=False), {"random_state", "early_stopping"}
    elif model.kind == "logistic_regression":
        # LogisticRegression's default max_iter (100) stops short on unscaled features: 1000 unless configured.
        estimator, fixed = LogisticRegression(random_state=model.seed, max_iter=1000), {"random_state"}
    else:
        estimator, fixed = Ridge(random_state=model.seed), {"random_state"}
    known = set(estimator.get_params()) - fixed
    unknown = sorted(set(hp) - known)
    if unknown:
        raise ValueError(
            f"model.hyperparameters {unknown} are not parameters of {type(estimator).__name__} "
            f"(model.kind {model.kind}, task {model.task}); it takes {', '.join(sorted(known))}"
        )
    return estimator.set_params(**hp)


def build_pipeline(features: FeaturesConfig, model: ModelConfig) -> Pipeline:
    """An unfitted Pipeline: imputation/encoding of the configured columns, then the configured estimator."""
    # Two stock transformers, no nesting: every sklearn sub-transformer adds ~1-2 ms of per-call validation,
    # which dominates serving cost at small batch sizes. Stock classes only, so an artifact loads without this
    # project's code (rollbacks). OneHotEncoder treats a missing category as its own value.
    strategy = "constant" if features.numeric_imputation == "zero" else features.numeric_imputation
    imputer = SimpleImputer(strategy=strategy, fill_value=0.0, add_indicator=True)
    numeric: object = (
        Pipeline([("impute", imputer), ("scale", StandardScaler())]) if features.scale_numeric else imputer
    )
    transformers: list[tuple[str, object, list[str]]] = []
    if features.numeric:
        transformers.append(("numeric", numeric, features.numeric))
    if features.categorical or features.boolean:
        # uint8 indicators: the encoder's output is a full-height copy before ColumnTransformer stacks it with
        # the numeric columns into float64 (the same values); at float64 it was ~1 GB of the fit's peak at 10M rows
        encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.uint8)
        transformers.append(("categorical", encoder, [*features.categorical, *features.boolean]))
    prep = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    return Pipeline([("features", prep), ("model", build_estimator(model))])


def split_frame(
    frame: pd.DataFrame, ds: DatasetConfig, split: SplitConfig, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): the latest `holdout_fraction` of rows by timestamp, or a seeded random sample,
    stratified by the label for classification (a `label` target) and plain for regression."""
    if split.method == "time":
        # The row order from a two-column frame of the sort keys; the table itself is copied once, into the two
        # parts (sorting a copy of the whole table held three copies at once: 10M rows took ~6 GB here).
        keys = pd.DataFrame(
            {
                "ts": pd.to_datetime(frame[ds.timestamp]).reset_index(drop=True),
                "id": frame[ds.id].reset_index(drop=True),
            }
        )
        order = keys.sort_values(["ts", "id"], kind="stable").index.to_numpy()
        del keys
        cut = round(len(order) * (1 - split.holdout_fraction))
        parts = frame.take(order[:cut]), frame.take(order[cut:])
        for part in parts:
            part.index = pd.RangeIndex(len(part))
        return parts
    from sklearn.model_selection import train_test_split

    classification = ds.columns[ds.target].type == "label"
    train, holdout = train_test_split(
        frame,
        test_size=split.holdout_fraction,
        random_state=seed,
        stratify=frame[ds.target] if classification else None,
    )
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def fit_pipeline(
    pipeline: Pipeline,
    train: pd.DataFrame,
    features: FeaturesConfig,
    target: str,
    objective: Objective,
    threads: int,
) -> Pipeline:
    """Fit on the training frame (labels as int, regression targets as float) with exactly `threads` threads
    (model.threads: the fitted bytes depend on it); returns the fitted pipeline."""
    from threadpoolctl import threadpool_limits

    with pd.option_context("mode.copy_on_write", True):  # the inputs as views of `train`, not a copy of them
        inputs = train[features.all]
    with threadpool_limits(limits=threads):
        return pipeline.fit(inputs, objective.target(train[target]))


@dataclass(frozen=True)
class Trained:
    """A fitted pipeline and how long the fit took."""

    model: Any
    fit_s: float


@tollgate_task
def train_model(
    train: pd.DataFrame, features: FeaturesConfig, model: ModelConfig, target: str, objective: Objective
) -> Trained:
    """Build and fit the configured Pipeline."""
    start = time.perf_counter()
    fitted = fit_pipeline(build_pipeline(features, model), train, features, target, objective, model.threads)
    return Trained(fitted, time.perf_counter() - start)


@tollgate_task
def split_dataset(
    frame: pd.DataFrame, ds: DatasetConfig, split: SplitConfig, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into (train, holdout) per config."""
    return split_frame(frame, ds, split, seed)
