"""Small synthetic frames and configs shared by the test tiers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tollgate.config import DatasetConfig, TollgateConfig, load_config
from tollgate.paths import StatePaths
from tollgate.secrets import Login, read_login
from tollgate.synthetic import generate

ROOT = Path(__file__).resolve().parent.parent

# One valid /predict record of the bundled schema (a missing total_charges is allowed there).
GOOD_RECORD = {
    "customer_id": "C1",
    "region": "north",
    "plan": "basic",
    "tier": "gold",
    "payment_method": "card",
    "tenure_months": 12,
    "monthly_charges": 40.5,
    "total_charges": None,
    "support_calls_90d": 2,
    "last_login_days": 3.2,
    "usage_gb": 10,
    "autopay": True,
    "has_discount": False,
}


def bundled_config(environ: dict[str, str] | None = None) -> TollgateConfig:
    """The bundled config (dev), ignoring the session's TOLLGATE__ overrides unless given."""
    return load_config(ROOT / "configs" / "pipeline.yaml", "dev", environ=environ or {}).config


def _login(path: Path) -> tuple[str, str]:
    login: Login | None = read_login(path)
    assert login is not None, f"no login in {path}: the stack was not started with servers.auth on"
    return login.username, login.password


def prefect_auth(home: Path | None = None) -> tuple[str, str]:
    """(user, password) of the Prefect API of the stack kept in `home` (default: the session's, $TOLLGATE_HOME),
    as httpx's `auth=` takes it."""
    return _login((StatePaths(home) if home else StatePaths.from_env()).prefect_auth)


def mlflow_auth(home: Path | None = None) -> tuple[str, str]:
    """(user, password) of the MLflow server of the stack kept in `home` (default: the session's), for `auth=`."""
    return _login((StatePaths(home) if home else StatePaths.from_env()).mlflow_auth)


def small_dataset_config(min_rows: int = 10) -> DatasetConfig:
    """The bundled dataset schema with a row-count floor small enough for unit-test frames."""
    ds = bundled_config().dataset
    return ds.model_copy(update={"row_count": ds.row_count.model_copy(update={"min": min_rows})})


def small_frame(rows: int = 40, scenario: str = "none") -> pd.DataFrame:
    """`rows` valid rows of the bundled schema."""
    gen = bundled_config().generation
    assert gen is not None
    return (
        generate(gen.model_copy(update={"rows": max(rows, 100), "period_rows": max(rows, 100)}), scenario)
        .head(rows)
        .copy()
    )


def copy_project(dst: Path) -> Path:
    """The working tree's tracked (and new, unignored) files committed to a fresh git repo on branch main: what
    a clone of the current work would hold."""
    import shutil
    import subprocess

    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dst, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dst, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], cwd=dst, check=True)
    return dst


def open_in_chromium(page: Path, screenshot: Path) -> str:
    """Open a local HTML file in Debian's headless Chromium (`make engines` installs it) and take a screenshot;
    returns what the page logged. Fails naming any console message of level error or a resource that did not load
    (the release report must open offline, whole)."""
    import shutil
    import subprocess
    import tempfile

    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: `make engines` (part of `make test`) installs Debian's"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",  # root in a container has no user namespace for the sandbox
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                f"--screenshot={screenshot}",
                "--window-size=1200,3000",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    said = proc.stderr
    console = [line for line in said.splitlines() if "CONSOLE" in line or "Failed to load resource" in line]
    assert proc.returncode == 0 and screenshot.exists(), f"chromium exit {proc.returncode}:\n{said[-2000:]}"
    assert console == [], "\n".join(console)
    return said
