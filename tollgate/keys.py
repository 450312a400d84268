"""Safe MLflow keys for values users bring (segment values with unicode, spaces, punctuation, any length).

MLflow accepts only letters, digits, `_ - . / ` and spaces in metric, param and tag keys (and limits their
length), so a value that is not already safe becomes a stable slug plus a short hash of the original. The
mapping back to the original value is stored with the run (`key_map`), so every table shows the original.
"""

from __future__ import annotations

import hashlib
import re

_SAFE = re.compile(r"^[A-Za-z0-9_\-.]{1,40}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")


def key_part(value: object) -> str:
    """`value` itself when it is short and safe in an MLflow key, else slug + '-' + 8 hex of its sha1."""
    text = str(value)
    if _SAFE.match(text):
        return text
    slug = _UNSAFE.sub("_", text).strip("_")[:24] or "v"
    return f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def segment_key(column: str, value: object, metric: str) -> str:
    """The metric key of one segment's metric, e.g. seg.tier.gold.auc or seg.region.S_o_Paulo-1a2b3c4d.auc."""
    return f"seg.{key_part(column)}.{key_part(value)}.{metric}"
