"""Commands that train: train (training_pipeline) and retrain (the guarded retrain flow)."""

from __future__ import annotations

import argparse
import time

from tollgate.app.commands.base import (
    EXIT_OK,
    CheckFailed,
    Command,
    UserError,
    arg,
    print_json,
    print_verdict,
    require_stack,
)
from tollgate.app.commands.rollout import deploy_stages
from tollgate.app.output import Phrase, library_output, say
from tollgate.context import Context


def training_stages(ctx: Context) -> dict[str, Phrase]:
    """training_pipeline's progress: a line as each of these tasks starts (from its parameters; output.Progress)."""
    cfg = ctx.config
    return {
        "pin_data_version": lambda p: f"{p['rows']} rows passed validation; pinning the data version ...",
        "train_model": lambda p: f"training {cfg.model.kind} on {len(p['train'])} rows ...",
        "score_holdout": lambda p: f"evaluating on {len(p['holdout'])} holdout rows ...",
        "log_training_run": "logging the run, its metrics and the release context to MLflow ...",
        "register_version": f"registering a new version of {cfg.project.registered_model} ...",
        "gate_challenger": "gating against the baseline ...",
    }


def train(ctx: Context, args: argparse.Namespace) -> int:
    require_stack(ctx)
    from flows.training import training_pipeline
    from tasks.data import DataVersionError
    from tasks.gates import GateRejected
    from tasks.validation import DataReadError, ValidationFailed

    data = str(ctx.resolve(args.data)) if args.data else None
    start = time.perf_counter()
    say(f"validating {args.data or ctx.config.dataset.path} ...")
    try:
        with library_output(training_stages(ctx)):
            result = training_pipeline(config=ctx, data=data, allow_dirty=args.allow_dirty)
    except ValidationFailed as exc:
        raise CheckFailed(
            f"data failed validation; no model was trained or registered.\n{exc.report.summary()}"
        ) from None
    except (DataReadError, DataVersionError) as exc:
        raise UserError(str(exc)) from None
    except GateRejected as exc:
        print_verdict(exc.verdict)
        raise CheckFailed(
            f"{ctx.config.project.registered_model} v{exc.version} was registered but REJECTED by the gate; "
            "it stays in stage None and production is unchanged"
        ) from None
    wall = time.perf_counter() - start
    print_verdict(result.verdict)
    d, fit, predict = result.data, result.timings["fit"], result.timings["predict"]
    matches = "matches data.dvc" if d.matches_dvc else "NOT the version data.dvc records"
    print(f"data: {d.path} md5 {d.md5} ({matches}), git {d.git_sha}{' (dirty)' if d.git_dirty else ''}")
    print(f"time: {wall:.1f} s wall, fit {fit:.2f} s + predict {predict:.2f} s ({(fit + predict) / wall:.0%} of wall)")
    steps = {k: v for k, v in result.timings.items() if k not in ("fit", "predict")}
    print("steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()) + " (timing_<step>_s on the run)")
    print(f"{ctx.config.project.registered_model} v{result.version} -> {result.stage} (run {result.run_id})")
    if args.json:
        print_json(result.to_dict(), indent=None)
    return EXIT_OK


def retrain(ctx: Context, args: argparse.Namespace) -> int:
    require_stack(ctx)
    from flows.retrain import retrain as retrain_flow
    from tasks.deployment import RolloutFailed
    from tasks.gates import GateRejected

    say(f"retrain ({args.reason}): checking the cooldown and the weekly budget ...")
    try:
        with library_output({**training_stages(ctx), **deploy_stages(ctx)}):
            result = retrain_flow(reason=args.reason, config=ctx)
    except GateRejected as exc:
        print_verdict(exc.verdict)
        raise CheckFailed(f"the retrained model v{exc.version} was rejected by the gate; it will not serve") from None
    except RolloutFailed as exc:
        raise CheckFailed(f"the retrained model's rollout stopped: {exc}") from None
    if result["status"] == "skipped":
        print(f"retrain skipped: {result['why']}")
        return EXIT_OK
    print(
        f"retrained v{result['version']} on {result['snapshot']} and deployed it (approved by {result['approved_by']})"
    )
    return EXIT_OK


COMMANDS = [
    Command(
        "train",
        "run training_pipeline: validate, train, evaluate, register, gate; prints version, verdict, "
        "stage; exit 1 if validation or the gate says no",
        train,
        (
            arg("--data", default=None, help="train on this .csv/.parquet instead of dataset.path (the DVC snapshot)"),
            arg(
                "--allow-dirty",
                action="store_true",
                help="train even if tracked files have uncommitted changes (the version is tagged git_dirty=true)",
            ),
            arg("--json", action="store_true", help="also print the result as one JSON line"),
        ),
    ),
    Command(
        "retrain",
        "run the guarded retrain flow now (cooldown, weekly budget, same gates and rollout)",
        retrain,
        (arg("--reason", default="manual", help="recorded with the retrain"),),
    ),
]
