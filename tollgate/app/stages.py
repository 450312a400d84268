"""Entry points for the dvc.yaml stages (validate -> train -> evaluate): `python -m tollgate.app.stages STAGE`.

They run the same plain functions as the Prefect flows, with params from the project's config, and write their
outputs under data/build/ so `dvc repro` can rebuild the model metrics from the recorded data and params.

`make repro CONFIG=... ENV=...` runs `python -m tollgate.app.stages repro --config ... --env ...`. dvc.yaml (and
so dvc.lock) describes configs/pipeline.yaml: for it `repro` runs `dvc repro`, whose stages get the environment
through $TOLLGATE_ENV; for any other config it runs the same three stages directly into
data/build/<registered model>/, since DVC's recorded params and deps are not that config's.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

from tasks.evaluation import evaluate_frame, predict_scores
from tasks.training import build_pipeline, fit_pipeline, split_frame
from tasks.validation import read_table, validate_frame
from tollgate.config import ENVIRONMENTS, LoadedConfig, load_config
from tollgate.objective import Objective
from tollgate.paths import StatePaths

BUILD = Path("data/build")
DVC_CONFIG = "configs/pipeline.yaml"  # the config dvc.yaml's params and deps name
STAGES = ("validate", "train", "evaluate")


def is_dvc_config(config: str | Path) -> bool:
    """Whether `config` is the file dvc.yaml tracks (configs/pipeline.yaml of the current directory)."""
    return Path(config).resolve() == (Path.cwd() / DVC_CONFIG).resolve()


def build_dir(loaded: LoadedConfig) -> Path:
    """data/build/ for the config DVC tracks, else data/build/<registered model>/ (outputs DVC does not own)."""
    if is_dvc_config(loaded.path):
        return BUILD
    return BUILD / re.sub(r"[^A-Za-z0-9_.-]+", "-", loaded.config.project.registered_model)


def run_stage(stage: str, loaded: LoadedConfig) -> int:
    """One stage with the loaded config, outputs in build_dir(loaded); returns the exit code."""
    cfg, build = loaded.config, build_dir(loaded)
    build.mkdir(parents=True, exist_ok=True)
    data = Path(cfg.dataset.path)
    frame = read_table(str(data if data.is_absolute() else loaded.root / data))
    if stage == "validate":
        report = validate_frame(frame, cfg.dataset, StatePaths.from_env(Path.cwd()).gx_root, source=cfg.dataset.path)
        (build / "validation.json").write_text(
            json.dumps(
                {"passed": report.passed, "rows": report.rows, "failures": [f.line() for f in report.failures]},
                indent=2,
            )
        )
        print(report.summary())
        return 0 if report.passed else 1
    train, holdout = split_frame(frame, cfg.dataset, cfg.split, cfg.model.seed)
    objective = Objective.from_config(cfg)
    if stage == "train":
        model = fit_pipeline(
            build_pipeline(cfg.features, cfg.model),
            train,
            cfg.features,
            cfg.dataset.target,
            objective,
            cfg.model.threads,
        )
        (build / "model.pkl").write_bytes(pickle.dumps(model))
        print(f"trained on {len(train)} rows")
        return 0
    model = pickle.loads((build / "model.pkl").read_bytes())
    metrics = evaluate_frame(
        holdout, predict_scores(model, holdout, cfg.features.all, objective), cfg.dataset, objective
    )
    (build / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"holdout {objective.primary} {metrics['overall'][objective.primary]:.4f} on {len(holdout)} rows")
    return 0


def repro(config: str, env: str) -> int:
    """`dvc repro` for the config dvc.yaml tracks (its stages get the env through $TOLLGATE_ENV); for any other
    config the three stages run directly into data/build/<registered model>/; returns the exit code."""
    if is_dvc_config(config):
        dvc = Path(sys.executable).parent / "dvc"
        return subprocess.run([str(dvc), "repro"], env={**os.environ, "TOLLGATE_ENV": env}).returncode
    loaded = load_config(config, env)
    print(
        f"{config} is not {DVC_CONFIG} (the config dvc.yaml and dvc.lock record): running the stages without "
        f"DVC's cache into {build_dir(loaded)}/"
    )
    for stage in STAGES:
        code = run_stage(stage, loaded)
        if code != 0:
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one stage (or `repro`, all of them) in the current directory, the project root as DVC runs it;
    returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m tollgate.app.stages")
    parser.add_argument("stage", choices=(*STAGES, "repro"))
    parser.add_argument("--config", default=DVC_CONFIG)
    parser.add_argument("--env", default=os.environ.get("TOLLGATE_ENV") or "dev", choices=ENVIRONMENTS)
    args = parser.parse_args(argv)
    if args.stage == "repro":
        return repro(args.config, args.env)
    return run_stage(args.stage, load_config(args.config, args.env))


if __name__ == "__main__":
    sys.exit(main())
