"""`tollgate config init` on tables no one here wrote (issue 33.3): the starter config it writes for each of the
three scikit-learn fixture tables trains, as written, to a Staging version through the real pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.training import training_pipeline
from tests.fixtures.sklearn_tables import NAMES, Example, build
from tollgate.app.cli import main
from tollgate.context import make_context


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Example]:
    return build(tmp_path_factory.mktemp("init-examples"))


@pytest.mark.parametrize("name", NAMES)
def test_a_starter_config_trains_with_no_edits(
    live_stack: dict[str, str], examples: dict[str, Example], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ex = examples[name]
    out = ex.project / "configs" / "starter.yaml"
    assert main(["config", "init", "--data", str(ex.table), "--target", ex.target, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    ctx = make_context(out, "dev").with_config(project={"registered_model": f"starter-{name}"})
    result = training_pipeline(config=ctx, allow_dirty=True)
    assert result.stage == "Staging", result.verdict
    assert Path(ctx.resolve(ctx.config.dataset.path)) == ex.table.resolve()
