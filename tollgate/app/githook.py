"""The git hook: install it (`tollgate hooks install`), and its helper that emits `tollgate.git.push` (sha,
branch, remote) to the configured Prefect server for a push that concerns ci.repository."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tollgate.context import Context


class HookError(Exception):
    """The hook cannot be installed (not a git repository, or a foreign hook is in the way)."""


def install_pre_push(root: Path, force: bool = False) -> Path:
    """Copy deployments/git-hooks/pre-push into the repository's hooks folder; returns where it went."""
    found = subprocess.run(["git", "rev-parse", "--git-path", "hooks"], cwd=root, capture_output=True, text=True)
    if found.returncode != 0:
        raise HookError(f"{root} is not a git repository: {found.stderr.strip()}")
    hooks = (root / found.stdout.strip()).resolve()
    hooks.mkdir(parents=True, exist_ok=True)
    target = hooks / "pre-push"
    if target.exists() and not force and "tollgate" not in target.read_text(errors="replace"):
        raise HookError(f"{target} exists and is not Tollgate's; pass --force to replace it")
    shutil.copy2(root / "deployments" / "git-hooks" / "pre-push", target)
    target.chmod(0o755)
    return target


def ci_repository(ctx: Context, pushed: str) -> str | None:
    """The repository a push event names for ci_pipeline to build: ci.repository when `pushed` (the remote pushed
    to) is it; the project root when ci.repository is unset (the pushed commit is in it, whatever the remote);
    None for a push anywhere else (no event: that run would be refused)."""
    from tasks.ci import configured_repository, same_repository  # imports Prefect: only after ctx.activate()

    configured = configured_repository(ctx)
    if ctx.config.ci.repository is None or same_repository(configured, pushed, ctx.root):
        return configured
    return None


def main(argv: list[str] | None = None) -> int:
    """Emit the event; returns 0 when it was sent, or when the push went to a repository CI does not build."""
    parser = argparse.ArgumentParser(prog="python -m tollgate.app.githook")
    parser.add_argument("--sha", required=True)
    parser.add_argument("--branch", required=True)
    parser.add_argument("--remote", required=True, help="the URL or path pushed to")
    parser.add_argument("--repo-name", default="tollgate")
    parser.add_argument("--env", default="dev")
    args = parser.parse_args(argv)
    from tollgate.context import make_context
    from tollgate.paths import PROJECT_ROOT

    rt = make_context(PROJECT_ROOT / "configs" / "pipeline.yaml", args.env)
    rt.activate()  # PREFECT_API_URL from config: without it an event goes nowhere
    from prefect.events import emit_event

    repository = ci_repository(rt, args.remote)
    if repository is None:
        print(f"tollgate: {args.remote} is not ci.repository ({rt.config.ci.repository}): no ci run", file=sys.stderr)
        return 0
    event = emit_event(
        event="tollgate.git.push",
        resource={"prefect.resource.id": f"tollgate.repo.{args.repo_name}", "prefect.resource.name": args.repo_name},
        payload={"sha": args.sha, "branch": args.branch, "remote": repository},
    )
    if event is None:
        print("tollgate: the push event was not sent (no Prefect API configured)", file=sys.stderr)
        return 1
    print(f"tollgate: emitted tollgate.git.push for {args.branch} at {args.sha[:12]} -> ci_pipeline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
