"""The CI stage's plain parts: the environment a checkout's commands run with holds no login and not the stack's
state folder; only ci.repository is built; the pushed config keeps the deploying environment's authority."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tasks.ci import (
    CIFailed,
    CIRefused,
    checkout_context,
    checkout_env,
    configured_repository,
    repository_to_build,
    same_repository,
)
from tollgate.app.githook import ci_repository
from tollgate.context import Context, make_context
from tollgate.paths import PROJECT_ROOT

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "pipeline.yaml"
LOGINS = {
    "PREFECT_API_AUTH_STRING": "tollgate:prefect-secret",
    "PREFECT_SERVER_API_AUTH_STRING": "tollgate:prefect-secret",
    "PREFECT_API_KEY": "pnu_key",
    "MLFLOW_TRACKING_USERNAME": "tollgate",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-secret",
    "MLFLOW_TRACKING_TOKEN": "mlflow-token",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "mlflow-secret",
    "MLFLOW_AUTH_CONFIG_PATH": "/state/mlflow/basic_auth.ini",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-key",
    "TOLLGATE_ADMIN_TOKEN": "admin-token",
    "TOLLGATE_APPROVER_SECRET": "approver-secret",
}
KEPT = {"PATH": "/usr/bin", "HOME": "/home/me", "PREFECT_API_URL": "http://127.0.0.1:4200/api", "AWS_PROFILE": "dvc"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Context:
    """The bundled config on a state folder of its own: the deploying environment."""
    return make_context(CONFIG, "dev", home=tmp_path_factory.mktemp("state"))


def test_checkout_env_drops_every_login_and_the_state_folder(stack: Context, tmp_path: Path) -> None:
    cfg = stack.config.model_copy(update={"serving": stack.config.serving.model_copy(update={"admin_token_env": "MY"})})
    environ = {**LOGINS, **KEPT, "MY": "named-admin-token", "TOLLGATE_HOME": "/state", "PREFECT_HOME": "/state/p"}
    before = dict(environ)
    env = checkout_env(environ, cfg, tmp_path / "scratch")
    assert not {*LOGINS, "MY"} & set(env)
    assert not {"prefect-secret", "mlflow-secret", "admin-token", "named-admin-token"} & {
        part for value in env.values() for part in value.split(":")
    }
    assert env["TOLLGATE_HOME"] == str(tmp_path / "scratch")
    assert env["PREFECT_HOME"] == str(tmp_path / "scratch" / "prefect")
    assert {k: env[k] for k in KEPT} == KEPT  # what a command needs to run (and dvc's data credentials) stays
    assert environ == before


@pytest.mark.parametrize(
    ("configured", "given", "same"),
    [
        ("/srv/repo", "/srv/repo", True),
        ("/srv/repo", "/srv/repo/", True),
        ("/srv/repo", "/srv/other/../repo", True),
        ("/srv/repo", "/srv/repo2", False),
        ("/srv/repo", "https://github.com/me/repo.git", False),
        ("git@github.com:me/repo.git", "git@github.com:me/repo.git", True),
        ("git@github.com:me/repo.git", "ssh://git@github.com/me/repo.git", False),  # exact strings only
        ("https://github.com/me/repo.git", "https://github.com/me/repo", False),
        ("https://github.com/me/repo.git", "", False),
    ],
)
def test_same_repository(configured: str, given: str, same: bool) -> None:
    assert same_repository(configured, given, Path("/srv")) is same


def test_a_relative_path_is_resolved_against_the_base(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "repo")
    assert same_repository(str(tmp_path / "repo"), "repo", tmp_path)
    assert same_repository(str(tmp_path / "repo"), str(tmp_path / "link"), Path("/"))


def test_only_ci_repository_is_built(stack: Context, tmp_path: Path) -> None:
    assert stack.config.ci.repository is None
    assert configured_repository(stack) == str(PROJECT_ROOT)
    assert repository_to_build(stack, None) == str(PROJECT_ROOT)
    assert repository_to_build(stack, str(PROJECT_ROOT) + "/") == str(PROJECT_ROOT)
    mine = stack.with_config(ci={"repository": str(tmp_path / "repo.git")})
    assert repository_to_build(mine, str(tmp_path / "repo.git")) == str(tmp_path / "repo.git")
    with pytest.raises(CIRefused) as refused:
        repository_to_build(mine, "/tmp/evil\nrepo")
    assert (
        str(refused.value) == f"refused: ci builds only ci.repository ({tmp_path / 'repo.git'}), not '/tmp/evil\\nrepo'"
    )
    with pytest.raises(CIRefused, match=r"not https://example.com/x.git$"):
        repository_to_build(mine, "https://example.com/x.git")
    remote = stack.with_config(ci={"repository": "git@github.com:me/churn.git"})
    assert repository_to_build(remote, "git@github.com:me/churn.git") == "git@github.com:me/churn.git"


def test_the_hook_names_the_repository_ci_builds_or_emits_nothing(stack: Context, tmp_path: Path) -> None:
    assert ci_repository(stack, "git@github.com:me/churn.git") == str(PROJECT_ROOT)  # unset: the project root
    remote = stack.with_config(ci={"repository": "git@github.com:me/churn.git"})
    assert ci_repository(remote, "git@github.com:me/churn.git") == "git@github.com:me/churn.git"
    assert ci_repository(remote, "git@github.com:me/fork.git") is None
    local = stack.with_config(ci={"repository": str(tmp_path / "bare.git")})
    assert ci_repository(local, str(tmp_path / "bare.git") + "/") == str(tmp_path / "bare.git")


def _checkout(tmp_path: Path, **changes: dict[str, object]) -> Path:
    """A checkout whose configs/pipeline.yaml is the bundled one with `changes` merged into its sections."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "configs", checkout / "configs")
    body = yaml.safe_load(CONFIG.read_text())
    for section, values in changes.items():
        body[section] = {**(body.get(section) or {}), **values}
    (checkout / "configs" / "pipeline.yaml").write_text(yaml.safe_dump(body))
    return checkout


def test_a_pushed_config_trains_with_the_deploying_environments_authority(stack: Context, tmp_path: Path) -> None:
    checkout = _checkout(
        tmp_path,
        model={"seed": 99},
        servers={"mlflow_tracking_uri": "http://attacker.example"},
        rollout={"approvers": ["mallory"], "auto_approve": True},
        serving={"admin_token_env": "PUSHED"},
        ci={"repository": "https://attacker.example/x.git"},
        project={"registered_model": "someone-else"},
    )
    ctx = checkout_context(stack, str(checkout), "configs/pipeline.yaml")
    assert ctx.config.model.seed == 99  # the commit's training config
    assert ctx.root == checkout.resolve() and ctx.paths == stack.paths
    for section in ("servers", "rollout", "serving", "ci", "alerts"):
        assert getattr(ctx.config, section) == getattr(stack.config, section), section
    assert ctx.config.project.registered_model == stack.config.project.registered_model


def test_a_pushed_dataset_outside_the_checkout_is_refused(stack: Context, tmp_path: Path) -> None:
    checkout = _checkout(tmp_path, dataset={"path": str(stack.paths.home / "elsewhere.parquet")})
    with pytest.raises(CIFailed, match="outside the checkout"):
        checkout_context(stack, str(checkout), "configs/pipeline.yaml")
