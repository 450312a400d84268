"""Authority belongs to the deploying environment, not the candidate release (issue 32.1): auto-approval acts only
where the deploying env's config allows it, never in prod, and a release's own rollout policy is evidence only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.analysis import evidence_markdown
from tasks.approvals import auto_approval
from tests.helpers import ROOT
from tollgate.config import ConfigError, load_config
from tollgate.context import make_context

CONFIG = ROOT / "configs" / "pipeline.yaml"


@pytest.mark.parametrize(
    ("env", "auto", "envs", "allowed"),
    [
        ("dev", True, None, True),  # dev is listed by default
        ("dev", False, None, False),  # nothing asked for it
        ("staging", True, None, False),  # staging is not listed by default
        ("staging", True, ["dev", "staging"], True),
        ("dev", True, [], False),
    ],
)
def test_auto_approval_follows_the_deploying_environment(
    tmp_path: Path, env: str, auto: bool, envs: list[str] | None, allowed: bool
) -> None:
    rollout: dict[str, object] = {"auto_approve": auto}
    if envs is not None:
        rollout["auto_approve_envs"] = envs
    ctx = make_context(CONFIG, env, home=tmp_path).with_config(rollout=rollout)
    why = auto_approval(ctx)
    assert (why is not None) is allowed
    if allowed:
        assert f"env {env}" in why  # type: ignore[operator]  # the ledger records which environment allowed it


def test_prod_can_never_allow_auto_approval(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"never allowed in prod"):
        load_config(CONFIG, "prod", environ={"TOLLGATE__ROLLOUT__AUTO_APPROVE_ENVS": '["dev", "prod"]'})
    ctx = make_context(CONFIG, "prod", home=tmp_path).with_config(rollout={"auto_approve": True})
    assert auto_approval(ctx) is None


def test_the_release_policy_is_shown_as_evidence_only(tmp_path: Path) -> None:
    ctx = make_context(CONFIG, "dev", home=tmp_path)
    released = ctx.with_config(rollout={"auto_approve": True, "approvers": ["mallory"]}).config.rollout
    text = evidence_markdown("3", "", None, [], ctx.config.rollout, released)
    assert "replacing no version: the first release" in text and "vnone" not in text
    assert "auto_approve: release says True, applied False" in text
    assert "approvers: release says ['mallory']" in text
