"""Secrets the stack hands to its parts: the gateway admin token (environment variable, else a 0600 file)."""

from __future__ import annotations

import os
import secrets

from tollgate.config import TollgateConfig
from tollgate.paths import StatePaths


def admin_token(cfg: TollgateConfig, paths: StatePaths) -> str | None:
    """The gateway admin token: the variable named by serving.admin_token_env, else the state-folder file."""
    token = os.environ.get(cfg.serving.admin_token_env)
    if token:
        return token
    return paths.admin_token.read_text().strip() if paths.admin_token.exists() else None


def ensure_admin_token(paths: StatePaths) -> None:
    """Create the gateway admin token file (mode 600) unless it exists."""
    if not paths.admin_token.exists():
        paths.admin_token.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(paths.admin_token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
