"""The git hook: install it (`tollgate hooks install`), and its helper that emits `tollgate.git.push` (sha,
branch, remote) to the configured Prefect server."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


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


def main(argv: list[str] | None = None) -> int:
    """Emit the event; returns 0 when it was sent."""
    parser = argparse.ArgumentParser(prog="python -m tollgate.app.githook")
    parser.add_argument("--sha", required=True)
    parser.add_argument("--branch", required=True)
    parser.add_argument("--remote", required=True, help="the URL or path pushed to (ci_pipeline clones it)")
    parser.add_argument("--repo-name", default="tollgate")
    parser.add_argument("--env", default="dev")
    args = parser.parse_args(argv)
    from tollgate.context import make_context
    from tollgate.paths import PROJECT_ROOT

    rt = make_context(PROJECT_ROOT / "configs" / "pipeline.yaml", args.env)
    rt.activate()  # PREFECT_API_URL from config: without it an event goes nowhere
    from prefect.events import emit_event

    event = emit_event(
        event="tollgate.git.push",
        resource={"prefect.resource.id": f"tollgate.repo.{args.repo_name}", "prefect.resource.name": args.repo_name},
        payload={"sha": args.sha, "branch": args.branch, "remote": args.remote},
    )
    if event is None:
        print("tollgate: the push event was not sent (no Prefect API configured)", file=sys.stderr)
        return 1
    print(f"tollgate: emitted tollgate.git.push for {args.branch} at {args.sha[:12]} -> ci_pipeline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
