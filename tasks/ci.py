"""CI stage: only the configured repository (ci.repository) is cloned; a commit's own code runs only to restore its
data, in a process that holds no login and not the stack's state folder; training, registering and deploying the
commit's config and data is this worker's code (flows/ci.py calls training_pipeline and deploy_model)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from prefect import get_run_logger

from tasks.common import tollgate_task
from tollgate.approvers import SECRET_ENV
from tollgate.config import ConfigError, TollgateConfig, load_config
from tollgate.context import Context
from tollgate.paths import PROJECT_ROOT
from tollgate.secrets import CREDENTIAL_VARS

# Variables that carry a login or a secret of the stack: no command run in a checkout gets them (checkout_env).
LOGIN_VARS: tuple[str, ...] = (
    *CREDENTIAL_VARS,  # PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_API_KEY",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "TOLLGATE_ADMIN_TOKEN",  # the default of serving.admin_token_env, dropped whatever the config names
    SECRET_ENV,
)
LOGIN_PREFIXES: tuple[str, ...] = ("MLFLOW_AUTH_",)  # the MLflow auth app's admin login and its config
# What the deploying environment decides whatever a pushed config says (authority belongs to the controller):
# which servers the worker's logins go to, the gateway and its admin token variable, who approves, where alerts
# go, and which repository CI builds. The registered model's name is kept too (see checkout_context).
CONTROLLER_SECTIONS: tuple[str, ...] = ("servers", "serving", "rollout", "alerts", "ci")


class CIFailed(Exception):
    """A CI step failed; the message carries the command's output."""


class CIRefused(CIFailed):
    """ci_pipeline was asked to build a repository other than ci.repository; nothing was cloned."""


def checkout_env(environ: Mapping[str, str], cfg: TollgateConfig, scratch_home: Path) -> dict[str, str]:
    """The environment of a command run in a checkout: `environ` without any login (LOGIN_VARS, MLFLOW_AUTH_*,
    the variable cfg.serving.admin_token_env names), with `scratch_home` as its state folder and Prefect home, so
    the checkout's code neither holds a credential nor is told where the stack's state folder is."""
    dropped = {*LOGIN_VARS, cfg.serving.admin_token_env}
    env = {k: v for k, v in environ.items() if k not in dropped and not k.startswith(LOGIN_PREFIXES)}
    env["TOLLGATE_HOME"] = str(scratch_home)
    env["PREFECT_HOME"] = str(scratch_home / "prefect")
    return env


def is_remote(spec: str) -> bool:
    """True for what git reads as a remote: a URL (scheme://...) or the scp-like host:path (a colon before any
    slash); False for a local path."""
    return "://" in spec or ":" in spec.split("/", 1)[0]


def configured_repository(ctx: Context) -> str:
    """ci.repository: a remote as written, a local path made absolute against the project root; the project root
    (the repository this worker's code comes from) when it is unset."""
    spec = ctx.config.ci.repository
    if spec is None:
        return str(PROJECT_ROOT)
    return spec if is_remote(spec) else str(ctx.resolve(Path(spec).expanduser()).resolve())


def same_repository(configured: str, given: str, base: Path) -> bool:
    """True when `given` names the `configured` repository: remotes compared exactly as strings, local paths
    once resolved (a relative `given` against `base`)."""
    if is_remote(configured) or is_remote(given):
        return configured == given
    return (base / Path(given).expanduser()).resolve() == Path(configured).resolve()


def _shown(text: str) -> str:
    return text if text and text.isprintable() else repr(text)


def repository_to_build(ctx: Context, repo: str | None) -> str:
    """The repository ci_pipeline clones: ci.repository. Raise CIRefused (one line, naming both) when `repo` (a
    run's parameter, or a push event's remote) names another one."""
    configured = configured_repository(ctx)
    if repo is not None and not same_repository(configured, repo, ctx.root):
        raise CIRefused(f"refused: ci builds only ci.repository ({configured}), not {_shown(repo)}")
    return configured


def checkout_cli(config: str, env: str, *args: str) -> list[str]:
    """The checkout's own `tollgate --config CONFIG --env ENV ...` (run with the checkout as working directory,
    so a relative CONFIG is the checkout's file and the code imported is the checkout's)."""
    return [sys.executable, "-m", "tollgate.app.cli", "--config", config, "--env", env, *args]


def restore_command(checkout: str, config: str, env: str) -> list[str]:
    """How the checkout gets its training data: `tollgate data generate` for a config that describes the bundled
    generator, else `dvc pull` of what the checkout's DVC files record (bring-your-own data)."""
    cfg = load_config(Path(checkout) / config, env).config
    if cfg.generation is not None:
        return checkout_cli(config, env, "data", "generate")
    return [str(Path(sys.executable).parent / "dvc"), "pull"]


def restore_data(checkout: str, config: str, env: str, cfg: TollgateConfig) -> str:
    """Run restore_command in the checkout with checkout_env (no login; a scratch state folder, removed after);
    returns the command's last line of output. Raise CIFailed when it fails."""
    try:
        cmd = restore_command(checkout, config, env)
    except ConfigError as exc:
        raise CIFailed(f"the config {config} at {checkout} does not load:\n{exc}") from exc
    with tempfile.TemporaryDirectory(prefix="tollgate-ci-home-") as scratch:
        child_env = checkout_env(os.environ, cfg, Path(scratch))
        proc = subprocess.run(cmd, cwd=checkout, env=child_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CIFailed(f"`{' '.join(cmd[1:])}` failed in {checkout}:\n{proc.stdout}{proc.stderr}")
    return (proc.stdout.strip().splitlines() or ["data restored"])[-1]


def checkout_context(stack: Context, checkout: str, config: str) -> Context:
    """The pushed commit's config (dataset, features, model, split, gates, monitoring, ...) read from the checkout,
    on this stack's state folder, with CONTROLLER_SECTIONS and project.registered_model taken from the deploying
    environment's config: a commit cannot send the worker's logins to another server, name its own approvers or
    register under another model. Raise CIFailed when it does not load or its dataset is outside the checkout."""
    try:
        loaded = load_config(Path(checkout) / config, stack.env)
    except ConfigError as exc:
        raise CIFailed(f"the config {config} at {checkout} does not load:\n{exc}") from exc
    body = loaded.config.model_dump()
    body.update({name: getattr(stack.config, name).model_dump() for name in CONTROLLER_SECTIONS})
    body["project"]["registered_model"] = stack.config.project.registered_model
    ctx = Context(loaded=replace(loaded, config=TollgateConfig.model_validate(body)), paths=stack.paths)
    data = ctx.resolve(ctx.config.dataset.path).resolve()
    if not data.is_relative_to(Path(checkout).resolve()):
        raise CIFailed(f"dataset.path of {config} at {checkout} is outside the checkout: {data}")
    return ctx


def clone_at(repo: str, sha: str, work: str) -> str:
    """A fresh clone of `repo` at `sha` under `work` (an earlier clone of the same sha is replaced)."""
    dest = Path(work) / f"ci-{sha[:12]}"
    if dest.exists():
        subprocess.run(["rm", "-rf", str(dest)], check=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for cmd in (
        ["git", "clone", "--quiet", "--no-checkout", repo, str(dest)],
        ["git", "-C", str(dest), "checkout", "--quiet", sha],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CIFailed(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    return str(dest)


@tollgate_task
def check_repository(ctx: Context, repo: str | None) -> str:
    """repository_to_build: the run fails here, before anything is cloned, for any repository but ci.repository."""
    return repository_to_build(ctx, repo)


@tollgate_task(idempotent_io=True, retries=3, retry_delay_s=5)
def checkout_commit(repo: str, sha: str, work: str) -> str:
    """A fresh clone of `repo` at `sha` (retried: a pre-push event can arrive before the push lands)."""
    return clone_at(repo, sha, work)


@tollgate_task
def prepare_checkout(ctx: Context, checkout: str, config: str) -> None:
    """Restore the snapshot the checkout's DVC files record (the bundled one regenerated deterministically and
    md5-checked; a user's table pulled from the DVC remote), with no login (restore_data)."""
    get_run_logger().info(restore_data(checkout, config, ctx.env, ctx.config))


@tollgate_task
def load_checkout(ctx: Context, checkout: str, config: str) -> Context:
    """checkout_context: what the worker's training_pipeline and deploy_model run the pushed commit with."""
    return checkout_context(ctx, checkout, config)
