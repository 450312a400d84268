"""Entry points for the dvc.yaml stages (validate -> train -> evaluate): `python -m tollgate.app.stages STAGE`.

They run the same plain functions as the Prefect flows, with params from configs/, and write their outputs
under data/build/ so `dvc repro` can rebuild the model metrics from the recorded data and params.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

from tasks.evaluation import evaluate_frame, predict_scores
from tasks.training import build_pipeline, fit_pipeline, split_frame
from tasks.validation import read_table, validate_frame
from tollgate.config import load_config
from tollgate.objective import Objective
from tollgate.paths import StatePaths

BUILD = Path("data/build")


def main(argv: list[str] | None = None) -> int:
    """Run one stage in the current directory (the project root, as DVC runs it); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m tollgate.app.stages")
    parser.add_argument("stage", choices=("validate", "train", "evaluate"))
    parser.add_argument("--config", default="configs/pipeline.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, "dev").config
    BUILD.mkdir(parents=True, exist_ok=True)
    frame = read_table(cfg.dataset.path)
    if args.stage == "validate":
        report = validate_frame(frame, cfg.dataset, StatePaths.from_env(Path.cwd()).gx_root, source=cfg.dataset.path)
        (BUILD / "validation.json").write_text(
            json.dumps(
                {"passed": report.passed, "rows": report.rows, "failures": [f.line() for f in report.failures]},
                indent=2,
            )
        )
        print(report.summary())
        return 0 if report.passed else 1
    train, holdout = split_frame(frame, cfg.dataset, cfg.split, cfg.model.seed)
    objective = Objective.from_config(cfg)
    if args.stage == "train":
        model = fit_pipeline(
            build_pipeline(cfg.features, cfg.model), train, cfg.features, cfg.dataset.target, objective
        )
        (BUILD / "model.pkl").write_bytes(pickle.dumps(model))
        print(f"trained on {len(train)} rows")
        return 0
    model = pickle.loads((BUILD / "model.pkl").read_bytes())
    metrics = evaluate_frame(
        holdout, predict_scores(model, holdout, cfg.features.all, objective), cfg.dataset, objective
    )
    (BUILD / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"holdout {objective.primary} {metrics['overall'][objective.primary]:.4f} on {len(holdout)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
