"""Types as users have them: the explicit, documented coercions applied to a table before validation.

Each rule changes a column's dtype only where no value changes (README "Bring your own data"):
- label: values stored as another type than the config lists the classes (bools or whole floats for int
  classes, text '0'/'1' as CSV exports hold them, categoricals, padded text) -> the configured class values, when
  every value is one of them.
- int: whole-number floats -> int64 (Int64 when nulls are allowed and present); a non-whole value is a failure
  naming the rows.
- category / string: pandas `category`, `string` (python or Arrow) -> plain Python str objects (nulls kept).
- timestamp: per the column's `format`: "auto" keeps datetimes and parses ISO text; "epoch_s"/"epoch_ms" read
  numbers as UTC epoch; "year" reads an integer year as 1 January of it. Unparseable values are left for the
  validation suite to name.
Anything else is left as it is for the suite to judge (and name).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tollgate.config import ColumnSpec, DatasetConfig
from tollgate.objective import as_classes


@dataclass(frozen=True)
class Coercion:
    """One column whose dtype was changed (value-preserving) before validation."""

    column: str
    from_dtype: str
    to_dtype: str
    rule: str


@dataclass(frozen=True)
class Rejection:
    """A column whose values cannot take the declared type without changing a value."""

    column: str
    reason: str
    rows: list[int]


def _is_text_like(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(s.dtype)


def _whole(values: pd.Series) -> pd.Series:
    """True where a float is a whole number (nulls count as whole)."""
    x = values.astype("float64")
    return x.isna() | (np.floor(x) == x)


def _as_text(s: pd.Series) -> pd.Series:
    out = s.astype(object)
    return out.where(s.notna(), None)


def _conform_column(name: str, s: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, str | None, Rejection | None]:
    kind, dtype = spec.type, s.dtype
    if kind in ("category", "string") and _is_text_like(s) and not pd.api.types.is_object_dtype(dtype):
        return _as_text(s), f"{kind}: {dtype} values as text", None
    if kind == "label":
        return _label(s, spec)
    if kind == "int" and pd.api.types.is_float_dtype(dtype):
        whole = _whole(s)
        if not whole.all():
            rows = [int(i) for i in np.flatnonzero(~whole.to_numpy())[:10]]
            return s, None, Rejection(name, "non-whole values in an int column", rows)
        target = "Int64" if s.isna().any() else "int64"
        return s.astype(target), f"int: whole-number {dtype} as {target}", None
    if kind == "int" and isinstance(dtype, pd.api.extensions.ExtensionDtype) and pd.api.types.is_integer_dtype(dtype):
        return (s.astype("int64"), f"int: {dtype} as int64", None) if s.notna().all() else (s, None, None)
    if kind == "timestamp":
        return _timestamp(s, spec)
    return s, None, None


def _label(s: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, str | None, Rejection | None]:
    """Class values stored as another type than the config lists them (bools or whole floats for int classes,
    text '0'/'1' as CSV exports hold them, categoricals) read as the configured values when every value is one."""
    labels = tuple(spec.values or [])
    if s.dtype == _label_dtype(labels) and (s.dtype != object or pd.api.types.infer_dtype(s, skipna=False) == "string"):
        return s, None, None
    mapped, bad = as_classes(s, labels)
    if bad.any():
        return s, None, None  # the suite names the values outside the classes
    return mapped, f"label: {s.dtype} values read as the classes {list(labels)}", None


def _label_dtype(labels: tuple[object, ...]) -> np.dtype:
    if all(type(v) is int for v in labels):
        return np.dtype("int64")
    if all(isinstance(v, bool) for v in labels):
        return np.dtype(bool)
    return np.dtype(object)


def _timestamp(s: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, str | None, Rejection | None]:
    fmt = spec.format
    if fmt == "auto" or not pd.api.types.is_numeric_dtype(s.dtype):
        return s, None, None  # datetimes and ISO text as they are; anything else is the suite's to name
    if fmt == "year":
        years = pd.to_numeric(s, errors="coerce")
        out = pd.to_datetime(years.astype("Int64").astype("string") + "-01-01", errors="coerce", format="%Y-%m-%d")
        return out, f"timestamp: integer year ({s.dtype}) as 1 January", None
    unit = "s" if fmt == "epoch_s" else "ms"
    return pd.to_datetime(s, unit=unit, errors="coerce"), f"timestamp: epoch {unit} ({s.dtype}) as datetime", None


def conform(frame: pd.DataFrame, ds: DatasetConfig) -> tuple[pd.DataFrame, list[Coercion], list[Rejection]]:
    """The frame with the documented coercions applied, what was coerced, and what cannot be without loss."""
    out, done, rejected = frame, [], []
    for name, spec in ds.columns.items():
        if name not in frame.columns:
            continue
        series, rule, rejection = _conform_column(name, frame[name], spec)
        if rejection is not None:
            rejected.append(rejection)
        if rule is not None:
            if out is frame:
                out = frame.copy()
            out[name] = series
            done.append(Coercion(name, str(frame[name].dtype), str(series.dtype), rule))
    return out, done, rejected
