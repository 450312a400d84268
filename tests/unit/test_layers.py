"""Imports point one way: app -> flows -> tasks | serving -> core. A violation names the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# layer of a module path -> the top-level packages (or subpackages) it must never import
FORBIDDEN = {
    "core": ("flows", "tasks", "serving", "tollgate.app"),
    "tasks": ("flows", "serving", "tollgate.app"),
    "serving": ("flows", "tasks", "tollgate.app"),
    "flows": ("serving", "tollgate.app"),
    "app": (),
}


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    if rel[0] == "tollgate":
        return "app" if len(rel) > 2 and rel[1] == "app" else "core"
    return rel[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module named by an import statement in the file (top level and inside functions)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            # `from tollgate import app` names the app package too
            out.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return out


def _violations(files: list[Path]) -> list[str]:
    found = []
    for path in files:
        banned = FORBIDDEN[_layer(path)]
        seen_lines: set[int] = set()
        for line, module in _imports(path):
            hit = next((b for b in banned if module == b or module.startswith(b + ".")), None)
            if hit and line not in seen_lines:
                seen_lines.add(line)
                found.append(f"{path.relative_to(ROOT)}:{line}: {_layer(path)} imports {module} (layer '{hit}')")
    return sorted(set(found))


def _sources() -> list[Path]:
    return [p for pkg in ("tollgate", "tasks", "serving", "flows") for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_imports_point_one_way() -> None:
    problems = _violations(_sources())
    assert not problems, "imports against the layer direction:\n" + "\n".join(problems)


def test_nothing_outside_the_app_layer_imports_it() -> None:
    users = [p for p in _sources() if _layer(p) != "app"]
    problems = [v for v in _violations(users) if "tollgate.app" in v]
    assert not problems


@pytest.mark.parametrize(
    ("layer_dir", "source", "expected"),
    [
        ("serving", "from tasks.registry import x\n", "serving imports tasks.registry"),
        ("tollgate", "def f():\n    import flows.training\n", "core imports flows.training"),
        ("tasks", "from tollgate import app\n", "tasks imports tollgate.app"),
        ("tollgate", "from tollgate.app.stack import Stack\n", "core imports tollgate.app.stack"),
    ],
)
def test_the_check_names_the_offending_line(tmp_path: Path, layer_dir: str, source: str, expected: str) -> None:
    """The checker itself catches each kind of wrong-way import (so a passing run means something)."""
    target = ROOT / layer_dir / f"_layer_probe_{tmp_path.name}.py"
    target.write_text(source)
    try:
        problems = _violations([target])
    finally:
        target.unlink()
    assert len(problems) == 1 and expected in problems[0], problems
