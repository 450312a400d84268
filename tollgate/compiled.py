"""The fitted training pipeline compiled to ONNX, scored with ONNX Runtime, and the parity check that decides
whether the compiled model may stand in for the sklearn one.

`convert` turns the fitted Pipeline (ColumnTransformer of SimpleImputer(add_indicator) [+ StandardScaler] and
OneHotEncoder, then HistGradientBoosting / LogisticRegression / Ridge) into ONNX bytes with one graph input per
feature column; `OnnxScorer` duck-types the fitted pipeline for `Objective.outputs`; `parity` compares the two.

Numbers stay float64 end to end, as in sklearn: a tree threshold often equals a training value exactly (a
percentile inside a run of ties, e.g. the imputed median), so float32 arithmetic moves such rows to the other
branch (measured with scale_numeric: 8-14% of holdout rows, probabilities off by up to 0.25). skl2onnx converts
the ColumnTransformer, the encoder and the linear models; the imputer (skl2onnx ignores add_indicator), the
scaler (subtract then divide, as sklearn does) and HistGradientBoosting (ai.onnx.ml TreeEnsemble, opset 5,
double splits and leaf values, baseline and inverse link as `_raw_predict` does) have converters of their own,
bound to private subclasses so nothing global changes. Outputs agree to ~1e-15.

Categorical and boolean columns are fed as strings and the encoder's categories are rewritten to the same
strings in a copy before conversion. Each value maps to one token (`token`) that keeps sklearn's matching
rules: strings as they are; bools and numbers by numeric value (True, 1 and 1.0 match one category, as in
sklearn); None and NaN apart (sklearn keeps them apart: None from JSON or object parquet columns, NaN from
pandas categoricals); anything else by type and repr. Non-string tokens start with a control character, and a
string that starts with it is escaped, so a token never stands for two values sklearn would tell apart.
"""

from __future__ import annotations

import copy
import json
import math
import re
import threading
import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tollgate.config import FeaturesConfig
from tollgate.objective import Objective
from tollgate.procs import usable_cores

TARGET_OPSET = 17
MARK = "\x1f"  # starts every non-string token
NONE_TOKEN = MARK + "None"
NAN_TOKEN = MARK + "nan"
SMALL = 64  # up to this many rows a plain loop beats factorize
_META_CLASSES = "tollgate.classes"
_META_INPUTS = "tollgate.inputs"
_convert_lock = threading.Lock()


class Unconvertible(Exception):
    """The pipeline cannot be compiled; str(exc) is the one-line reason."""


def token(value: Any) -> str:
    """The string a categorical/boolean value is fed as; equal tokens exactly when sklearn's encoder would
    match the values (Python equality, None and NaN distinct)."""
    if isinstance(value, str):
        return value if not value.startswith(MARK) else f"{MARK}str:{value}"
    if value is None:
        return NONE_TOKEN
    if isinstance(value, (bool, int, np.bool_, np.integer)):
        return f"{MARK}num:{int(value)}"
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isnan(f):
            return NAN_TOKEN
        return f"{MARK}num:{int(f)}" if f.is_integer() else f"{MARK}num:{f!r}"
    return f"{MARK}{type(value).__name__}:{value!r}"


def _tokens(values: np.ndarray) -> np.ndarray:
    """Tokens of a 1-d array of values, vectorised over distinct values for long arrays."""
    n = len(values)
    if values.dtype == np.bool_:
        return np.where(values, token(True), token(False)).astype(object)
    if n <= SMALL:
        return np.array([token(v) for v in values], dtype=object)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    table = np.array([token(v) for v in uniques] + [""], dtype=object)
    out: np.ndarray = table[codes]
    missing = np.flatnonzero(codes < 0)
    if len(missing):  # factorize folds None and NaN together; sklearn does not
        out[missing] = [token(v) for v in values[missing]]
    return out


def _category_column(series: pd.Series) -> np.ndarray:
    """A categorical/boolean column as the (n, 1) object array of tokens fed to the model, from the values
    sklearn's encoder sees (its check_array of the column)."""
    values = series.values  # ~2x cheaper than to_numpy(); an ndarray for numpy dtypes
    if isinstance(values, np.ndarray):
        return _tokens(values).reshape(-1, 1)
    if isinstance(values, pd.Categorical):  # sklearn sees the values, NaN for missing
        table = np.array([token(v) for v in values.categories] + [NAN_TOKEN], dtype=object)
        return table[values.codes].reshape(-1, 1)
    from sklearn.utils import check_array

    converted = check_array(series, ensure_2d=False, dtype=None, ensure_all_finite=False)
    return _tokens(converted).reshape(-1, 1)


def _numeric_column(series: pd.Series) -> np.ndarray:
    """A numeric column as the (n, 1) float64 array fed to the model, NaN for missing (None, pd.NA)."""
    values = series.values
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False).reshape(-1, 1)
    return np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan)).reshape(-1, 1)


def input_names(columns: list[str]) -> dict[str, str]:
    """Column -> graph input name: the column, or an identifier-safe, unique spelling of it."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for c in columns:
        name = re.sub(r"\W", "_", c, flags=re.ASCII) or "col"
        if name[0].isdigit():
            name = "c_" + name
        base, k = name, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        out[c] = name
    return out


# ---------------------------------------------------------------------------------------------------------------
# conversion


def _private_classes() -> dict[type, type]:
    """sklearn class -> a private subclass with its own ONNX converter, registered once: skl2onnx's imputer
    ignores add_indicator, and its scaler and tree converters compute in float32, which moves values that sit
    on a tree threshold (ties, imputed medians) to the other branch."""
    global _PRIVATE
    if _PRIVATE is None:
        from skl2onnx import update_registered_converter
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes,
            calculate_linear_regressor_output_shapes,
        )
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import StandardScaler

        made: dict[type, type] = {}
        specs: list[tuple[type, Any, Any, dict[str, list[Any]] | None]] = [
            (SimpleImputer, _imputer_shape, _imputer_converter, None),
            (StandardScaler, _same_shape, _scaler_converter, None),
            (
                HistGradientBoostingClassifier,
                calculate_linear_classifier_output_shapes,
                _hgb_converter,
                {"zipmap": [True, False, "columns"], "nocl": [True, False]},
            ),
            (HistGradientBoostingRegressor, calculate_linear_regressor_output_shapes, _hgb_converter, None),
        ]
        for base, shape, conv, options in specs:
            sub = types.new_class(
                f"Tollgate{base.__name__}", (base,), exec_body=lambda ns: ns.update(__module__=__name__)
            )
            update_registered_converter(sub, f"Tollgate{base.__name__}", shape, conv, options=options)
            made[base] = sub
        _PRIVATE = made
    return _PRIVATE


_PRIVATE: dict[type, type] | None = None


def _swapped(obj: Any) -> Any:
    """obj with its fitted state, as the private subclass of its class (obj itself when there is none)."""
    sub = _private_classes().get(type(obj))
    if sub is None:
        return obj
    out: Any = object.__new__(sub)
    out.__dict__.update(obj.__dict__)
    return out


def _elem(var: Any) -> int:
    """The ONNX element type of a skl2onnx variable."""
    return int(var.type.to_onnx_type().tensor_type.elem_type)


def _const(scope: Any, container: Any, seed: str, values: Any, elem: int) -> str:
    from onnx import numpy_helper
    from onnx.helper import tensor_dtype_to_np_dtype

    name = scope.get_unique_variable_name(seed)
    arr = np.asarray(values, dtype=tensor_dtype_to_np_dtype(elem))
    container.add_initializer(name, elem, list(arr.shape), numpy_helper.from_array(arr, name))
    return name


def _node(scope: Any, container: Any, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
    out = output or scope.get_unique_variable_name(op.lower())
    container.add_node(op, inputs, [out], name=scope.get_unique_operator_name(op), **attrs)
    return out


def _imputer_layout(op: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fill values, kept input columns, indicated input columns) of a fitted SimpleImputer."""
    stats = np.asarray(op.statistics_, dtype=np.float64)
    keep = np.arange(len(stats)) if op.keep_empty_features else np.flatnonzero(~np.isnan(stats))
    indicated = np.asarray(op.indicator_.features_ if op.add_indicator else [], dtype=np.int64)
    return stats, keep, indicated


def _imputer_shape(operator: Any) -> None:
    _, keep, indicated = _imputer_layout(operator.raw_operator)
    n = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = operator.inputs[0].type.__class__([n, len(keep) + len(indicated)])


def _same_shape(operator: Any) -> None:
    operator.outputs[0].type = operator.inputs[0].type.__class__(list(operator.inputs[0].type.shape))


def _imputer_converter(scope: Any, operator: Any, container: Any) -> None:
    """Where(IsNaN(x), fill, x) on the kept columns, then the indicator IsNaN(x)[:, features_] as numbers:
    SimpleImputer(add_indicator=True).transform, exactly."""
    op = operator.raw_operator
    if not (isinstance(op.missing_values, float) and math.isnan(op.missing_values)):
        raise Unconvertible(f"numeric imputer: missing_values {op.missing_values!r} is not NaN")
    stats, keep, indicated = _imputer_layout(op)
    elem = _elem(operator.inputs[0])
    x = operator.inputs[0].full_name
    isnan = _node(scope, container, "IsNaN", [x])
    fill = _const(scope, container, "fill", np.nan_to_num(stats), elem)
    parts = [_node(scope, container, "Where", [isnan, fill, x])]
    if len(keep) < len(stats):
        parts[0] = _gather(scope, container, parts[0], keep)
    if len(indicated):
        parts.append(_node(scope, container, "Cast", [_gather(scope, container, isnan, indicated)], to=elem))
    out = operator.outputs[0].full_name
    if len(parts) == 1:
        _node(scope, container, "Identity", parts, out)
    else:
        _node(scope, container, "Concat", parts, out, axis=1)


def _scaler_converter(scope: Any, operator: Any, container: Any) -> None:
    """(x - mean_) / scale_ as StandardScaler.transform does it (subtract, then divide; no reciprocal)."""
    op = operator.raw_operator
    elem = _elem(operator.inputs[0])
    x = operator.inputs[0].full_name
    if op.with_mean:
        x = _node(scope, container, "Sub", [x, _const(scope, container, "mean", op.mean_, elem)])
    if op.with_std:
        x = _node(scope, container, "Div", [x, _const(scope, container, "scale", op.scale_, elem)])
    _node(scope, container, "Identity", [x], operator.outputs[0].full_name)


def _gather(scope: Any, container: Any, x: str, columns: np.ndarray) -> str:
    from onnx import TensorProto

    idx = _const(scope, container, "columns", np.asarray(columns, dtype=np.int64), TensorProto.INT64)
    return _node(scope, container, "Gather", [x, idx], axis=1)


def _tree_ensemble(model: Any) -> dict[str, Any]:
    """The attributes of one ai.onnx.ml TreeEnsemble (opset 5, double splits and weights) holding every tree
    of a fitted HistGradientBoosting model: BRANCH_LEQ on num_threshold, NaN to the missing_go_to_left side,
    leaf values summed per target (class). A one-leaf tree becomes a split whose both sides are that leaf."""
    from onnx import numpy_helper

    feat: list[int] = []
    split: list[float] = []
    missing: list[int] = []
    t_id: list[int] = []
    t_leaf: list[int] = []
    f_id: list[int] = []
    f_leaf: list[int] = []
    roots: list[int] = []
    targets: list[int] = []
    weights: list[float] = []
    for predictors in model._predictors:
        for k, predictor in enumerate(predictors):
            nodes = predictor.nodes
            leaf = nodes["is_leaf"].astype(bool)
            if nodes["is_categorical"].any():
                raise Unconvertible("step 'model': categorical splits of HistGradientBoosting")
            gid = np.where(leaf, np.cumsum(leaf) - 1 + len(weights), np.cumsum(~leaf) - 1 + len(feat))
            targets += [k] * int(leaf.sum())
            weights += nodes["value"][leaf].tolist()
            if leaf[0]:
                roots.append(len(feat))
                feat += [0]
                split += [0.0]
                missing += [0]
                t_id += [int(gid[0])]
                t_leaf += [1]
                f_id += [int(gid[0])]
                f_leaf += [1]
                continue
            roots.append(int(gid[0]))
            branch = nodes[~leaf]
            left, right = branch["left"].astype(np.int64), branch["right"].astype(np.int64)
            feat += branch["feature_idx"].tolist()
            split += branch["num_threshold"].tolist()
            missing += branch["missing_go_to_left"].astype(np.int64).tolist()
            t_id += gid[left].tolist()
            t_leaf += leaf[left].astype(np.int64).tolist()
            f_id += gid[right].tolist()
            f_leaf += leaf[right].astype(np.int64).tolist()
    return {
        "n_targets": int(model.n_trees_per_iteration_),
        "aggregate_function": 1,  # SUM
        "post_transform": 0,  # NONE: the baseline and the link follow
        "tree_roots": roots,
        "nodes_featureids": feat,
        "nodes_modes": numpy_helper.from_array(np.zeros(len(feat), dtype=np.uint8)),  # BRANCH_LEQ
        "nodes_splits": numpy_helper.from_array(np.asarray(split, dtype=np.float64)),
        "nodes_missing_value_tracks_true": missing,
        "nodes_truenodeids": t_id,
        "nodes_trueleafs": t_leaf,
        "nodes_falsenodeids": f_id,
        "nodes_falseleafs": f_leaf,
        "leaf_targetids": targets,
        "leaf_weights": numpy_helper.from_array(np.asarray(weights, dtype=np.float64)),
    }


def _hgb_converter(scope: Any, operator: Any, container: Any) -> None:
    """HistGradientBoosting in double: raw = trees + baseline, then the loss's inverse link (sigmoid, softmax,
    identity or exp), as `_raw_predict` and `_loss` do it."""
    from onnx import TensorProto

    model = operator.raw_operator
    if getattr(model, "_preprocessor", None) is not None:
        raise Unconvertible("step 'model': HistGradientBoosting with native categorical features")
    double = TensorProto.DOUBLE
    x = operator.inputs[0].full_name
    if _elem(operator.inputs[0]) != double:
        x = _node(scope, container, "Cast", [x], to=double)
    raw = scope.get_unique_variable_name("raw")
    container.add_node(
        "TreeEnsemble",
        [x],
        [raw],
        op_domain="ai.onnx.ml",
        op_version=3,  # skl2onnx 1.20 refuses ml opset 5; convert() raises the import to 5
        name=scope.get_unique_operator_name("TreeEnsemble"),
        **_tree_ensemble(model),
    )
    raw = _node(
        scope, container, "Add", [raw, _const(scope, container, "baseline", model._baseline_prediction, double)]
    )
    link = type(model._loss.link).__name__
    if hasattr(model, "classes_"):
        if len(model.classes_) == 2:
            if link != "LogitLink":
                raise Unconvertible(f"step 'model': binary link {link}")
            p1 = _node(scope, container, "Sigmoid", [raw])
            p0 = _node(scope, container, "Sub", [_const(scope, container, "one", [[1.0]], double), p1])
            proba = _node(scope, container, "Concat", [p0, p1], axis=1)
        else:
            if link != "MultinomialLogit":
                raise Unconvertible(f"step 'model': multiclass link {link}")
            proba = _node(scope, container, "Softmax", [raw], axis=1)
        label_out, proba_out = operator.outputs[0], operator.outputs[1]
        _node(scope, container, "Cast", [proba], proba_out.full_name, to=_elem(proba_out))
        best = _node(scope, container, "ArgMax", [proba], axis=1, keepdims=0)
        classes = np.asarray(model.classes_)
        if classes.dtype.kind in "iub":
            table = _const(scope, container, "classes", classes.astype(np.int64), TensorProto.INT64)
            label = _node(scope, container, "Gather", [table, best], axis=0)
            _node(scope, container, "Cast", [label], label_out.full_name, to=_elem(label_out))
        else:
            raise Unconvertible(f"step 'model': class labels of dtype {classes.dtype} (integers only)")
        return
    if link == "LogLink":
        raw = _node(scope, container, "Exp", [raw])
    elif link != "IdentityLink":
        raise Unconvertible(f"step 'model': regression link {link}")
    out = operator.outputs[0]
    _node(scope, container, "Cast", [raw], out.full_name, to=_elem(out))


def _prepared(pipeline: Any, features: FeaturesConfig, names: dict[str, str]) -> Any:
    """A deep copy of the fitted pipeline rewritten for conversion: columns renamed to the graph inputs,
    imputer, scaler and estimator as their private subclasses, the encoder's categories as tokens.
    Unconvertible names the step it cannot take."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    steps = getattr(pipeline, "steps", None)
    if not isinstance(pipeline, Pipeline) or not steps or len(steps) != 2:
        raise Unconvertible(f"pipeline: expected Pipeline(features, model), got {type(pipeline).__name__}")
    (prep_name, prep), (model_name, model) = steps
    if not isinstance(prep, ColumnTransformer):
        raise Unconvertible(f"step '{prep_name}': {type(prep).__name__} is not a ColumnTransformer")
    estimators = (HistGradientBoostingClassifier, HistGradientBoostingRegressor, LogisticRegression, Ridge)
    if type(model) not in estimators:
        raise Unconvertible(f"step '{model_name}': {type(model).__name__} is not a supported estimator")
    if np.ndim(getattr(model, "coef_", 0)) > 1 and model.coef_.shape[0] > 1 and type(model) is Ridge:
        raise Unconvertible(f"step '{model_name}': multi-output Ridge")
    out = copy.deepcopy(pipeline)
    prep = out.steps[0][1]
    out.steps[1] = (model_name, _swapped(out.steps[1][1]))
    rewritten = []
    for name, trans, cols in prep.transformers_:
        where = f"step '{prep_name}/{name}'"
        if isinstance(trans, str):
            if trans != "drop":
                raise Unconvertible(f"{where}: '{trans}' columns are not supported")
            rewritten.append((name, trans, cols))
            continue
        if not (isinstance(cols, list) and all(isinstance(c, str) and c in names for c in cols)):
            raise Unconvertible(f"{where}: columns {cols!r} are not configured features")
        parts = trans.steps if isinstance(trans, Pipeline) else [(name, trans)]
        for i, (part_name, part) in enumerate(parts):
            at = f"step '{prep_name}/{name}/{part_name}'" if isinstance(trans, Pipeline) else where
            if isinstance(part, OneHotEncoder):
                if part.drop_idx_ is not None or getattr(part, "_infrequent_enabled", False):
                    raise Unconvertible(f"{at}: dropped or infrequent categories are not supported")
                part.categories_ = [np.array([token(v) for v in cats], dtype=object) for cats in part.categories_]
            elif type(part) in (SimpleImputer, StandardScaler):
                if isinstance(trans, Pipeline):
                    trans.steps[i] = (part_name, _swapped(part))
                else:
                    trans = _swapped(part)
            else:
                raise Unconvertible(f"{at}: {type(part).__name__} is not a supported transform")
        rewritten.append((name, trans, [names[c] for c in cols]))
    prep.transformers_ = rewritten
    return out


def convert(pipeline: Any, features: FeaturesConfig) -> bytes:
    """ONNX model bytes of the fitted pipeline (all transforms + estimator), one input per feature column
    (numeric: double (n, 1); categorical and boolean: string (n, 1) of `token`s); Unconvertible with the step
    when it cannot be compiled."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    names = input_names(features.all)
    with _convert_lock:
        prepared = _prepared(pipeline, features, names)
        initial: list[tuple[str, Any]] = [(names[c], DoubleTensorType([None, 1])) for c in features.numeric]
        initial += [(names[c], StringTensorType([None, 1])) for c in [*features.categorical, *features.boolean]]
        options = {id(prepared): {"zipmap": False}} if hasattr(prepared, "classes_") else None
        try:
            onx = to_onnx(prepared, initial_types=initial, options=options, target_opset=TARGET_OPSET)
        except Unconvertible:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise Unconvertible(f"skl2onnx failed on the pipeline: {type(exc).__name__}: {first}") from exc
    if any(n.op_type == "TreeEnsemble" for n in onx.graph.node):
        for opset in onx.opset_import:
            if opset.domain == "ai.onnx.ml":
                opset.version = max(opset.version, 5)
    classes = getattr(pipeline, "classes_", None)
    meta = {_META_INPUTS: json.dumps(names)}
    if classes is not None:
        meta[_META_CLASSES] = json.dumps([v.item() if hasattr(v, "item") else v for v in classes])
    for key, value in meta.items():
        entry = onx.metadata_props.add()
        entry.key, entry.value = key, value
    return bytes(onx.SerializeToString())


# ---------------------------------------------------------------------------------------------------------------
# scoring


class OnnxScorer:
    """Duck-types the fitted sklearn pipeline for Objective.outputs: predict_proba(frame) (classification,
    float64 (n, k) in the order of classes_), predict(frame) (regression float64 (n,); classification: the
    class labels), classes_ (classification: same values as the sklearn model's). One InferenceSession with
    intra_op_num_threads=`threads` (serving: 1, it runs one scoring thread per process; batch scoring and the
    parity check: every core), inter_op_num_threads=1."""

    def __init__(self, model_bytes: bytes, features: FeaturesConfig, classes: list[Any] | None, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        names = json.loads(meta[_META_INPUTS]) if _META_INPUTS in meta else input_names(features.all)
        self._inputs: dict[str, tuple[str, bool]] = {c: (names[c], c in features.numeric) for c in features.all}
        outputs = {o.name for o in self.session.get_outputs()}
        self.is_classifier = "probabilities" in outputs
        if self.is_classifier:
            if classes is None and _META_CLASSES in meta:
                classes = json.loads(meta[_META_CLASSES])
            if classes is None:
                raise ValueError("a classifier needs its classes (the sklearn model's classes_)")
            self.classes_ = np.asarray(classes)
            self._output = "probabilities"
        else:
            self._output = self.session.get_outputs()[0].name

    def feeds(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The graph inputs for a feature frame: float64 (n, 1) per numeric column, token strings (n, 1) per
        categorical/boolean column. Columns are read in one pass of frame.items(): per-column indexing costs
        more than the model at one row."""
        out: dict[str, np.ndarray] = {}
        for column, series in frame.items():
            spec = self._inputs.get(str(column))
            if spec is not None:
                name, numeric = spec
                out[name] = _numeric_column(series) if numeric else _category_column(series)
        if len(out) != len(self._inputs):
            missing = [c for c, (name, _) in self._inputs.items() if name not in out]
            raise KeyError(f"feature columns missing from the frame: {missing}")
        return out

    def _run(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.session.run([self._output], self.feeds(frame))[0])

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Class probabilities, float64 (n, k) in classes_ order."""
        if not self.is_classifier:
            raise AttributeError("a regressor has no predict_proba")
        return np.asarray(self._run(frame), dtype=np.float64)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Regression: the predicted values, float64 (n,); classification: the most probable class label."""
        if self.is_classifier:
            out: np.ndarray = self.classes_[np.argmax(self._run(frame), axis=1)]
            return out
        return np.asarray(self._run(frame), dtype=np.float64).reshape(-1)


# ---------------------------------------------------------------------------------------------------------------
# parity


def parity(
    pipeline: Any,
    scorer: OnnxScorer,
    frame: pd.DataFrame,
    objective: Objective,
    tolerance: float = 1e-5,
    reference: np.ndarray | None = None,
) -> dict[str, Any]:
    """Compare Objective.outputs of the sklearn pipeline and the scorer on `frame` (the release's holdout
    features): a JSON-able {"ok", "rows", "max_abs_diff", "decisions_differ", "tolerance", "reason"}.

    ok requires max |sklearn - onnx| <= tolerance over every output (probability or value) and the same
    objective.decision() on every row: the threshold decision (binary), the class (multiclass); for regression
    the decision is the value itself, so it differs when the two values are more than `tolerance` apart
    (comparing values rounded to k decimals would flag values that straddle a rounding boundary however close
    they are). An empty frame, a shape mismatch or a non-finite output is not ok; reason then names the first
    failing row with both outputs."""
    rows = len(frame)
    report: dict[str, Any] = {
        "ok": False,
        "rows": rows,
        "max_abs_diff": None,
        "decisions_differ": 0,
        "tolerance": tolerance,
        "reason": None,
    }
    if rows == 0:
        report["reason"] = "no rows to compare"
        return report
    outputs = objective.outputs(pipeline, frame) if reference is None else reference  # the run's own holdout scores
    ref = np.asarray(outputs, dtype=np.float64)
    got = np.asarray(objective.outputs(scorer, frame), dtype=np.float64)
    if ref.shape != got.shape:
        report["reason"] = f"output shapes differ: sklearn {ref.shape} vs onnx {got.shape}"
        return report
    diff = np.abs(ref - got).reshape(rows, -1)
    diff[np.isnan(diff)] = np.inf
    per_row = diff.max(axis=1)
    if objective.task == "regression":
        differ = per_row > tolerance
    else:
        differ = objective.decision(ref) != objective.decision(got)
    worst = float(per_row.max())
    report["max_abs_diff"] = worst if math.isfinite(worst) else None
    report["decisions_differ"] = int(differ.sum())
    bad = np.flatnonzero((per_row > tolerance) | differ)
    if len(bad) == 0:
        report["ok"] = True
        return report
    i = int(bad[0])
    why = f"|diff| {per_row[i]:.3g} > tolerance {tolerance:g}" if per_row[i] > tolerance else "within tolerance"
    if differ[i] and objective.task != "regression":
        one_ref, one_got = objective.decision(ref[i : i + 1])[0], objective.decision(got[i : i + 1])[0]
        why += f", decision sklearn {one_ref} vs onnx {one_got}"
    report["reason"] = (
        f"{len(bad)} of {rows} rows differ; first row {i} (index {frame.index[i]!r}): sklearn "
        f"{np.round(ref[i], 8).tolist()} vs onnx {np.round(got[i], 8).tolist()} ({why})"
    )
    return report


# ---------------------------------------------------------------------------------------------------------------
# at registration

PARITY_TOLERANCE = 1e-5  # max |sklearn - onnx| over every output on the release's holdout


@dataclass(frozen=True)
class Compiled:
    """A fitted pipeline's compiled form and the parity check that decides whether it may score: `onnx` is the
    model's bytes only when parity held; `report` is parity()'s JSON-able report (ok, rows, max_abs_diff,
    decisions_differ, tolerance, reason), with the conversion's failure as its reason when there was one."""

    onnx: bytes | None
    report: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.onnx is not None

    @property
    def reason(self) -> str:
        """Why the sklearn model scores instead ('' when the compiled one does)."""
        return "" if self.ok else str(self.report.get("reason") or "parity not met")


def compile_checked(
    pipeline: Any,
    holdout: pd.DataFrame,
    features: FeaturesConfig,
    objective: Objective,
    reference: np.ndarray | None = None,
) -> Compiled:
    """Convert the fitted pipeline and check parity on the holdout's feature columns (PARITY_TOLERANCE, the same
    decisions) against `reference`, the sklearn outputs the run already computed on that holdout (computed here
    when None); never raises for a pipeline it cannot compile (the report says why)."""
    try:
        data = convert(pipeline, features)
        classes = getattr(pipeline, "classes_", None)
        scorer = OnnxScorer(data, features, None if classes is None else list(classes), usable_cores())
    except Unconvertible as exc:
        report = {"ok": False, "rows": 0, "max_abs_diff": None, "decisions_differ": 0, "reason": f"not compiled: {exc}"}
        return Compiled(None, {**report, "tolerance": PARITY_TOLERANCE})
    report = parity(pipeline, scorer, holdout[features.all], objective, PARITY_TOLERANCE, reference)
    return Compiled(data if report["ok"] else None, report)
