"""What a scoring record may carry: the serving rules, per record (the gateway, 422) and per table (batch
inference, a rejects file), with every field at fault named.

Which fields a record may carry, and how each is checked:
- the entity id (dataset.id): required, a non-empty string or an integer;
- every model feature: required (null only where the column allows nulls), typed and in range;
- every other schema column (the timestamp, segment columns that are not features, any other declared column):
  optional, absent or null is fine, but a value that is present is checked by its spec: the timestamp is read as
  its `format` declares (a malformed one is a 422 naming the field), categories must be listed, numbers in range;
- the target (dataset.target): not an input. With dataset.extra_columns "forbid" it is a 422 ("the target is not
  an input"); with "allow" it is ignored like any extra field (never logged, never scored). Labels reach the
  pipeline through the backfill flow, not through /predict;
- any field the schema does not declare: a 422 under "forbid", ignored under "allow".

In a table (batch inference) a null is an empty cell (None, NaN, NaT), a missing column is a field missing from
every row, and a column the schema does not declare is such a field in every row. Values echoed in an error are
cut short (SHOWN_CHARS).

`RequestSchema.errors` checks one record (the gateway's hot path: plain Python); `RequestSchema.frame_errors`
applies the same rules to a whole table column by column (numbers and ranges vectorised, anything else once per
distinct value), with the same messages; a unit test holds the two to the same answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tollgate.config import ColumnSpec, TollgateConfig
from tollgate.predlog import event_seconds

SHOWN_CHARS = 80  # how much of a rejected value an error repeats


def shown(value: Any) -> str:
    """`value`'s repr for an error message, cut to SHOWN_CHARS."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


@dataclass(frozen=True)
class FieldRule:
    """How one request field is checked."""

    name: str
    kind: str
    nullable: bool
    lo: float | None
    hi: float | None
    allowed: frozenset[str] | None
    required: bool = True
    time_format: str = "auto"


class RequestSchema:
    """Validates prediction records (see the module docstring) and says what of a record is logged."""

    def __init__(self, cfg: TollgateConfig):
        ds = cfg.dataset
        self.id_field = ds.id
        self.target = ds.target
        self.timestamp = ds.timestamp
        self.time_format = ds.columns[ds.timestamp].format
        self.features = cfg.features.all
        others = [c for c in ds.columns if c not in {ds.id, ds.target, *self.features}]
        self.rules = [self._rule(name, ds.columns[name], True) for name in self.features] + [
            self._rule(name, ds.columns[name], False) for name in others
        ]
        self.logged = tuple(c for c in ds.columns if c not in (ds.id, ds.target))  # logged when present
        self.known = set(ds.columns) - {ds.target}
        self.forbid_extra = ds.extra_columns == "forbid"

    @staticmethod
    def _rule(name: str, spec: ColumnSpec, required: bool) -> FieldRule:
        allowed = frozenset(spec.categories) if spec.categories else None
        nullable = spec.max_null_fraction > 0 or not required
        return FieldRule(name, spec.type, nullable, spec.min, spec.max, allowed, required, spec.format)

    def errors(self, record: Any, where: str) -> list[dict[str, str]]:
        """Every problem with one record; `where` prefixes field names (e.g. 'records[3].')."""
        if not isinstance(record, dict):
            return [
                {"field": where.rstrip(".") or "body", "error": f"expected a JSON object, got {type(record).__name__}"}
            ]
        out: list[dict[str, str]] = []
        if _id_problem(record.get(self.id_field)):
            out.append({"field": f"{where}{self.id_field}", "error": _ID_REQUIRED})
        for rule in self.rules:
            problem = self._check(rule, record.get(rule.name, _MISSING))
            if problem:
                out.append({"field": f"{where}{rule.name}", "error": problem})
        if self.forbid_extra:
            for key in record:
                if key == self.target:
                    out.append({"field": f"{where}{key}", "error": _TARGET_NOT_INPUT})
                elif key not in self.known:
                    out.append({"field": f"{where}{key}", "error": _UNKNOWN_FIELD})
        return out

    def frame_errors(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Every problem with every row of a table, as `errors` finds it in the row as a record (a null cell as
        an absent-or-null value): a frame of (row: 0-based position, field, error), rows in order and a row's
        problems in the order `errors` lists them."""
        found: list[tuple[np.ndarray, str, np.ndarray]] = []
        n = len(frame)

        def every_row(field: str, message: str) -> None:
            found.append((np.arange(n), field, np.full(n, message, dtype=object)))

        if self.id_field in frame.columns:
            rows, messages = _column_problems(frame[self.id_field], _id_problem, None)
            found.append((rows, self.id_field, messages))
        else:
            every_row(self.id_field, _ID_REQUIRED)
        for rule in self.rules:
            if rule.name not in frame.columns:
                if rule.required:
                    every_row(rule.name, "field required")
                continue
            rows, messages = _column_problems(frame[rule.name], lambda v, r=rule: self._check(r, v), rule)
            found.append((rows, rule.name, messages))
        if self.forbid_extra:
            for column in frame.columns:
                if column == self.target:
                    every_row(str(column), _TARGET_NOT_INPUT)
                elif column not in self.known:
                    every_row(str(column), _UNKNOWN_FIELD)
        if not any(len(f[0]) for f in found):
            return pd.DataFrame({"row": np.zeros(0, dtype="int64"), "field": [], "error": []})
        rows = np.concatenate([f[0] for f in found]).astype("int64")
        order = np.argsort(rows, kind="stable")
        fields = np.concatenate([np.full(len(f[0]), f[1], dtype=object) for f in found])
        messages = np.concatenate([f[2] for f in found])
        return pd.DataFrame({"row": rows[order], "field": fields[order], "error": messages[order]})

    def logged_values(self, record: dict[str, Any]) -> dict[str, Any]:
        """What the prediction log keeps of a (valid) record: every schema column it carried except id and target."""
        return {c: record[c] for c in self.logged if c in record}

    def event_ts(self, record: dict[str, Any]) -> float | None:
        """The record's event time (its dataset.timestamp field) as epoch seconds; None when absent or unreadable."""
        try:
            return event_seconds(record.get(self.timestamp), self.time_format)
        except ValueError:
            return None

    @staticmethod
    def _check(rule: FieldRule, value: Any) -> str | None:
        if value is _MISSING:
            return "field required" if rule.required else None
        if value is None:
            return None if rule.nullable else "must not be null"
        if rule.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                return f"expected a number, got {shown(value)}"
            if rule.kind == "int" and float(value) != int(value):
                return f"expected an integer, got {shown(value)}"
            if (rule.lo is not None and value < rule.lo) or (rule.hi is not None and value > rule.hi):
                return f"{shown(value)} is outside the allowed range {rule.lo}..{rule.hi}"
            return None
        if rule.kind == "bool":
            return None if isinstance(value, bool) else f"expected true or false, got {shown(value)}"
        if rule.kind == "timestamp":
            try:
                event_seconds(value, rule.time_format)
            except ValueError as exc:
                return str(exc)
            return None
        if rule.kind == "label":
            return (
                None
                if isinstance(value, int) and not isinstance(value, bool)
                else f"expected a class, got {shown(value)}"
            )
        if not isinstance(value, str):
            return f"expected a string, got {shown(value)}"
        if rule.allowed is not None and value not in rule.allowed:
            return f"{shown(value)} is not one of {sorted(rule.allowed)}"
        return None


_MISSING = object()
_ID_REQUIRED = "entity id is required (string or integer)"
_TARGET_NOT_INPUT = "the target is not an input (labels go to backfill)"
_UNKNOWN_FIELD = "unknown field (dataset.extra_columns: forbid)"
# object columns whose distinct values may be checked once each: pandas hashes 1, 1.0 and True alike, so a column
# mixing Python types is checked per (type, value) instead
_ONE_KIND = {"string", "integer", "floating", "boolean", "datetime", "datetime64", "date", "empty", "decimal"}


def _id_problem(value: Any) -> str | None:
    if value is None or isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return _ID_REQUIRED
    return None


def _column_problems(values: pd.Series, check: Any, rule: FieldRule | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, messages) where `check(value)` finds a problem in a column (`rule` None: the entity id); a null cell
    is checked as None. Typed columns are judged vectorised (only the rows at fault one by one, for the message);
    anything else once per distinct value."""
    null = values.isna().to_numpy()
    bad = _vector_faults(values, null, rule)
    if bad is not None:
        rows = np.flatnonzero(bad)
        python = values.iloc[rows].astype(object).tolist()
        messages = [check(None if n else v) for v, n in zip(python, null[rows], strict=True)]
        return rows, np.asarray(messages, dtype=object)
    if pd.api.types.is_object_dtype(values.dtype) and pd.api.types.infer_dtype(values, skipna=True) not in _ONE_KIND:
        keyed: dict[tuple[Any, Any], str | None] = {}
        per_row = np.empty(len(values), dtype=object)
        for i, (v, n) in enumerate(zip(values.tolist(), null, strict=True)):
            key = (None, None) if n else (type(v), v)
            if key not in keyed:
                keyed[key] = check(None if n else v)
            per_row[i] = keyed[key]
    else:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        table = np.asarray([*(check(v) for v in _python(uniques)), check(None)], dtype=object)
        per_row = table[codes]
    rows = np.flatnonzero(pd.notna(per_row))
    return rows, per_row[rows]


def _vector_faults(values: pd.Series, null: np.ndarray, rule: FieldRule | None) -> np.ndarray | None:
    """The rows at fault, found on whole arrays, for the column types that allow it (numbers against a number
    rule, datetimes against the timestamp, text against text, integer or text ids); None for the rest."""
    dtype = values.dtype
    text = pd.api.types.is_object_dtype(dtype) and pd.api.types.infer_dtype(values, skipna=True) == "string"
    if rule is None:  # the entity id: a non-empty string or an integer
        if pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
            return null
        return null | (values == "").to_numpy() if text else None
    nulls = null if not rule.nullable else np.zeros(len(values), dtype=bool)
    if rule.kind in ("int", "float") and _plain_numbers(values):
        x = values.to_numpy(dtype="float64", na_value=np.nan)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(x)
            if rule.kind == "int":
                bad |= np.floor(x) != x
            if rule.lo is not None:
                bad |= x < rule.lo
            if rule.hi is not None:
                bad |= x > rule.hi
        return (bad & ~null) | nulls
    if rule.kind == "timestamp" and pd.api.types.is_datetime64_any_dtype(dtype):
        return nulls
    if rule.kind not in ("int", "float", "bool", "timestamp", "label") and text:
        if rule.allowed is None:
            return nulls
        return (~null & ~values.isin(rule.allowed).to_numpy()) | nulls
    return None


def _plain_numbers(values: pd.Series) -> bool:
    """Whether a column holds numbers only (int or float dtype, numpy or nullable; bools are not numbers)."""
    return pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)


def _python(uniques: Any) -> list[Any]:
    """Distinct values as Python objects (numpy and pandas scalars as int, float, bool, str, Timestamp)."""
    return list(uniques.tolist()) if hasattr(uniques, "tolist") else list(uniques)
