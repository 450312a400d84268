"""`tollgate config init`: a commented starter config guessed from a user's table.

Everything guessed is said in a comment beside it (column types, label values, the id and timestamp columns,
the task type); segments are left for the user. Gates, monitoring and rollout are left to the documented
defaults of the task type (tollgate/config.py: COMMON_DEFAULTS, TASK_DEFAULTS), except a regression's margin and
live thresholds, which are in the target's units and are derived here from the target's spread.
"""

from __future__ import annotations

import getpass
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tollgate.objective import positive_class

MAX_CATEGORIES = 50  # a text column with more distinct values is an identifier or free text, not a feature
MAX_CLASSES = 20  # an integer target with more distinct values is a regression
TIME_NAME = re.compile(r"(time|date|[ _-]at$|^ts$|timestamp)", re.IGNORECASE)
ID_NAME = re.compile(r"(^id$|_id$|^id_|uuid|key$)", re.IGNORECASE)


class StarterError(Exception):
    """The table cannot give a starter config (names the column and what is missing)."""


@dataclass
class Starter:
    """The config as a dict and a comment for each key path it guessed."""

    body: dict[str, Any]
    notes: dict[str, str] = field(default_factory=dict)


EPOCH_RANGES = {"epoch_s": (1e8, 4e9), "epoch_ms": (1e11, 4e12)}  # 1973..2096 in seconds or milliseconds


def _epoch_format(s: pd.Series) -> str | None:
    """'epoch_s' / 'epoch_ms' for a whole-number column named like a time whose values fall in that range."""
    if not pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        return None
    if not TIME_NAME.search(str(s.name)) or s.isna().all():
        return None
    low, high = float(s.min()), float(s.max())
    for fmt, (lo, hi) in EPOCH_RANGES.items():
        if lo <= low and high <= hi:
            return fmt
    return None


def _is_time(s: pd.Series) -> bool:
    if pd.api.types.is_datetime64_any_dtype(s.dtype) or _epoch_format(s) is not None:
        return True
    if s.dtype != object or pd.api.types.infer_dtype(s, skipna=True) != "string":
        return False
    sample = s.dropna().head(1000)
    parsed = pd.to_datetime(sample, errors="coerce", format="ISO8601", utc=True)
    return len(sample) > 0 and bool(parsed.notna().mean() >= 0.99)


def _class_values(s: pd.Series) -> list[Any] | None:
    """The class values of a target as the table holds them: whole numbers as ints, booleans, or text (at most
    MAX_CLASSES distinct values); None when it cannot be a class label."""
    values = s.dropna()
    if pd.api.types.is_bool_dtype(values.dtype):
        return [False, True]
    numeric = pd.to_numeric(values, errors="coerce")
    if not numeric.isna().any() and (numeric == numeric.round()).all():
        return sorted(int(v) for v in numeric.unique())
    if pd.api.types.is_numeric_dtype(values.dtype):
        return None
    text = values.astype(str).str.strip().unique()
    return sorted(text.tolist()) if len(text) <= MAX_CLASSES else None


def _task(s: pd.Series, asked: str) -> tuple[str, list[Any] | None, str]:
    classes = _class_values(s)
    numeric = pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)
    if asked == "regression" or (asked == "auto" and numeric and (classes is None or len(classes) > MAX_CLASSES)):
        if not pd.api.types.is_numeric_dtype(s.dtype):
            raise StarterError(f"target {s.name!r}: a regression needs numbers, it holds {s.dtype}")
        return "regression", None, "regression: the target is numeric" + ("" if asked == "auto" else " (--task)")
    if classes is None or len(classes) < 2:
        shown = [str(v) for v in s.dropna().unique()[:5]]
        raise StarterError(
            f"target {s.name!r}: {s.dropna().nunique()} distinct values (e.g. {shown}) are not class labels: a "
            f"classification target has 2 to {MAX_CLASSES} classes (use --task regression for a numeric target)"
        )
    task = "binary" if len(classes) == 2 else "multiclass"
    if asked not in ("auto", task):
        raise StarterError(f"target {s.name!r} has {len(classes)} classes {classes}: it is {task}, not {asked}")
    kind = "text" if isinstance(classes[0], str) else "boolean" if isinstance(classes[0], bool) else "whole-number"
    return task, classes, f"{task}: the target has {len(classes)} {kind} classes"


def _pick(frame: pd.DataFrame, role: str, test: Any, name: re.Pattern[str], skip: set[str]) -> tuple[str, str]:
    fits = [c for c in frame.columns if c not in skip and test(frame[c])]
    if not fits:
        raise StarterError(f"no {role} column found: the table needs one (add it, then run config init again)")
    named = [c for c in fits if name.search(str(c))]
    chosen = (named or fits)[0]
    why = "by its name" if named else "the first column that fits"
    return str(chosen), f"guessed: {role} ({why}; {len(fits)} candidate(s): {', '.join(map(str, fits[:5]))})"


def starter_config(frame: pd.DataFrame, target: str, task: str, data_path: str, name: str) -> Starter:
    """A config for `frame` with `target` as the label (task auto|binary|multiclass|regression)."""
    if target not in frame.columns:
        raise StarterError(f"--target {target!r} is not a column of the table ({', '.join(map(str, frame.columns))})")
    notes: dict[str, str] = {}
    task, classes, why = _task(frame[target], task)
    notes["model.task"] = f"guessed: {why}"
    time_col, notes["dataset.timestamp"] = _pick(frame, "timestamp", _is_time, TIME_NAME, {target})
    id_col, notes["dataset.id"] = _pick(
        frame,
        "id",
        lambda s: (s.dtype == object or pd.api.types.is_integer_dtype(s.dtype)) and s.notna().all() and s.is_unique,
        ID_NAME,
        {target, time_col},
    )
    columns: dict[str, Any] = {}
    features: dict[str, list[str]] = {"numeric": [], "categorical": [], "boolean": []}
    for col in frame.columns:
        col = str(col)
        s = frame[col]
        nulls = float(s.isna().mean())
        spec: dict[str, Any]
        if col == target:
            spec = {"type": "label", "values": classes} if classes is not None else {"type": "float"}
            if task == "binary" and classes is not None:
                spec["positive"] = positive_class(classes)
                notes[f"dataset.columns.{col}.positive"] = (
                    "guessed: the class whose probability is the score (1/true, else the last value in sorted "
                    "order): set it to the class you predict"
                )
        elif col == time_col:
            fmt = _epoch_format(s)
            spec = {"type": "timestamp", **({"format": fmt} if fmt else {})}
            if fmt:
                notes["dataset.timestamp"] += f"; stored as {fmt.replace('_', ' ')} numbers"
        elif col == id_col:
            spec = {"type": "string" if s.dtype == object else "int", "unique": True}
        elif pd.api.types.is_bool_dtype(s.dtype):
            spec, group = {"type": "bool"}, "boolean"
            features[group].append(col)
        elif pd.api.types.is_numeric_dtype(s.dtype):
            whole = pd.api.types.is_integer_dtype(s.dtype)
            spec, group = {"type": "int" if whole else "float"}, "numeric"
            features[group].append(col)
        else:
            values = s.dropna().astype(str).unique()
            if len(values) > MAX_CATEGORIES:
                spec = {"type": "string"}
                notes[f"dataset.columns.{col}"] = f"guessed: text with {len(values)} distinct values, not a feature"
            else:
                spec = {"type": "category", "categories": sorted(values.tolist())}
                features["categorical"].append(col)
        if nulls and col not in (id_col, time_col):
            spec["max_null_fraction"] = min(1.0, math.ceil((nulls + 0.02) * 100) / 100)
            notes.setdefault(
                f"dataset.columns.{col}", f"{nulls:.1%} missing in this table, with room for 2 points more"
            )
        columns[col] = spec
    if not any(features.values()):
        raise StarterError("no feature columns: every column is the target, the id, the timestamp or free text")
    body: dict[str, Any] = {
        "project": {"name": name, "registered_model": f"{name}-{task}", "owner": getpass.getuser()},
        "dataset": {
            "path": data_path,
            "id": id_col,
            "timestamp": time_col,
            "target": target,
            "segments": [],
            "columns": columns,
        },
        "features": {k: v for k, v in features.items() if v},
        "model": {"task": task, "kind": "hist_gradient_boosting", "seed": 42},
    }
    notes["dataset.segments"] = "left for you: columns to gate and monitor per value (e.g. [region])"
    if task == "regression":
        spread = float(pd.to_numeric(frame[target], errors="coerce").std())
        body["gates"] = {"non_inferiority_margin": round(0.05 * spread, 6)}
        body["monitoring"] = {"live_degraded_at": round(0.75 * spread, 6), "live_severe_at": round(spread, 6)}
        notes["gates.non_inferiority_margin"] = f"5% of the target's standard deviation ({spread:.4g}), in RMSE"
        notes["monitoring.live_degraded_at"] = "live RMSE above 0.75 x the target's standard deviation"
        notes["monitoring.live_severe_at"] = "live RMSE above 1 x the standard deviation: no better than the mean"
    return Starter(body, notes)


def render(starter: Starter, source: str, target: str) -> str:
    """The YAML text, with a header and each guess as a comment on its line."""
    lines = yaml.safe_dump(starter.body, sort_keys=False, allow_unicode=True, width=118).splitlines()
    out: list[str] = []
    path: list[str] = []
    for line in lines:
        indent = (len(line) - len(line.lstrip(" "))) // 2
        key = line.strip().split(":", 1)[0].strip("'\"")
        if ":" in line and not line.strip().startswith("-"):
            path = [*path[:indent], key]
        note = starter.notes.get(".".join(path)) if ":" in line and not line.strip().startswith("-") else None
        out.append(f"{line}  # {note}" if note else line)
    header = [
        f"# Starter config written by `tollgate config init --data {source} --target {target}`.",
        "# Every guess is said in a comment: check them, then `tollgate --config <this file> config check` and",
        "# `tollgate --config <this file> train`. Gates, monitoring and rollout take the task type's documented",
        "# defaults (README: Defaults); add any of their keys here to change one. Segments are left for you.",
    ]
    return "\n".join([*header, *out]) + "\n"


def relative_data_path(config_path: Path, data: Path) -> str:
    """`data` as the config will name it: relative to the project root the config resolves paths against."""
    folder = config_path.resolve().parent
    root = folder.parent if folder.name == "configs" else folder
    return os.path.relpath(data.resolve(), root)
