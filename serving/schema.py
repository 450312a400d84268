"""Request validation against the served release's schema: every field at fault is named (422)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tollgate.config import ColumnSpec, TollgateConfig


@dataclass(frozen=True)
class FieldRule:
    """How one request field is checked."""

    name: str
    kind: str
    nullable: bool
    lo: float | None
    hi: float | None
    allowed: frozenset[str] | None


class RequestSchema:
    """Validates prediction records: the entity id and every model feature, typed and in range."""

    def __init__(self, cfg: TollgateConfig):
        ds = cfg.dataset
        self.id_field = ds.id
        self.features = cfg.features.all
        self.rules = [self._rule(name, ds.columns[name]) for name in self.features]
        self.known = set(ds.columns) - {ds.target}
        self.forbid_extra = ds.extra_columns == "forbid"

    @staticmethod
    def _rule(name: str, spec: ColumnSpec) -> FieldRule:
        allowed = frozenset(spec.categories) if spec.categories else None
        return FieldRule(name, spec.type, spec.max_null_fraction > 0, spec.min, spec.max, allowed)

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
                if key not in self.known:
                    out.append({"field": f"{where}{key}", "error": "unknown field (dataset.extra_columns: forbid)"})
        return out

    @staticmethod
    def _check(rule: FieldRule, value: Any) -> str | None:
        if value is _MISSING:
            return "field required"
        if value is None:
            return None if rule.nullable else "must not be null"
        if rule.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                return f"expected a number, got {value!r}"
            if rule.kind == "int" and float(value) != int(value):
                return f"expected an integer, got {value!r}"
            if (rule.lo is not None and value < rule.lo) or (rule.hi is not None and value > rule.hi):
                return f"{value!r} is outside the allowed range {rule.lo}..{rule.hi}"
            return None
        if rule.kind == "bool":
            return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
        if not isinstance(value, str):
            return f"expected a string, got {value!r}"
        if rule.allowed is not None and value not in rule.allowed:
            return f"{value!r} is not one of {sorted(rule.allowed)}"
        return None


_MISSING = object()
