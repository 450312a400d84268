"""Request validation against the served release's schema: every field at fault is named (422).

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

Before any of that (`long_strings`), every field name and string value of a record is held to
serving.max_string_length: a longer one is a 422 naming the field and the setting, and the record is not looked at
further, so nothing that long is echoed, scored or written to the prediction log. Values echoed in an error are cut
short (SHOWN_CHARS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from serving.http import Limit
from tollgate.config import ColumnSpec, TollgateConfig
from tollgate.predlog import event_seconds

SHOWN_CHARS = 80  # how much of a rejected value an error repeats


def _shown(value: Any) -> str:
    """`value`'s repr for an error message, cut to SHOWN_CHARS."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def long_strings(records: list[Any], single: bool, limit: Limit) -> list[dict[str, Any]]:
    """An entry naming each field of `records` whose name or string value is longer than `limit` characters
    (serving.max_string_length); empty when there is none."""
    where = "" if single else "records[{}]."
    out: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            continue  # not a record: the schema says so, naming no value
        for key, value in record.items():
            if len(key) > limit.value:
                field, what = f"{key[:SHOWN_CHARS]}...", f"a field name of {len(key)} characters"
            elif isinstance(value, str) and len(value) > limit.value:
                field, what = key, f"a string of {len(value)} characters"
            else:
                continue
            error = f"{what}, over {limit.setting} = {limit.value}"
            out.append(
                {"field": where.format(i) + field, "error": error, "setting": limit.setting, "limit": limit.value}
            )
    return out


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
        rid = record.get(self.id_field)
        if rid is None or isinstance(rid, bool) or not isinstance(rid, str | int) or rid == "":
            out.append({"field": f"{where}{self.id_field}", "error": "entity id is required (string or integer)"})
        for rule in self.rules:
            problem = self._check(rule, record.get(rule.name, _MISSING))
            if problem:
                out.append({"field": f"{where}{rule.name}", "error": problem})
        if self.forbid_extra:
            for key in record:
                if key == self.target:
                    out.append(
                        {"field": f"{where}{key}", "error": "the target is not an input (labels go to backfill)"}
                    )
                elif key not in self.known:
                    out.append({"field": f"{where}{key}", "error": "unknown field (dataset.extra_columns: forbid)"})
        return out

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
                return f"expected a number, got {_shown(value)}"
            if rule.kind == "int" and float(value) != int(value):
                return f"expected an integer, got {_shown(value)}"
            if (rule.lo is not None and value < rule.lo) or (rule.hi is not None and value > rule.hi):
                return f"{_shown(value)} is outside the allowed range {rule.lo}..{rule.hi}"
            return None
        if rule.kind == "bool":
            return None if isinstance(value, bool) else f"expected true or false, got {_shown(value)}"
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
                else f"expected a class, got {_shown(value)}"
            )
        if not isinstance(value, str):
            return f"expected a string, got {_shown(value)}"
        if rule.allowed is not None and value not in rule.allowed:
            return f"{_shown(value)} is not one of {sorted(rule.allowed)}"
        return None


_MISSING = object()
