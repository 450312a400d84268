"""Request validation against the served release's schema (tollgate.request_schema: every field at fault is
named, 422), and the gateway's own first check: no field name or string value longer than
serving.max_string_length (`long_strings`), so nothing that long is echoed, scored or written to the prediction
log. Values echoed in an error are cut short (SHOWN_CHARS)."""

from __future__ import annotations

from typing import Any

from serving.http import Limit
from tollgate.request_schema import SHOWN_CHARS, RequestSchema

__all__ = ["RequestSchema", "long_strings"]


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
