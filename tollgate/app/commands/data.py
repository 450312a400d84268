"""Commands for the config and the data: config check/show, data generate/track, validate."""

from __future__ import annotations

import argparse
from pathlib import Path

from tollgate.app.commands.base import EXIT_NO, EXIT_OK, Command, UserError, arg, print_json, warn
from tollgate.app.output import library_output, say
from tollgate.config import SCENARIOS
from tollgate.context import Context


def config_check(ctx: Context, args: argparse.Namespace) -> int:
    print(f"ok: {ctx.loaded.path} (env {ctx.env}) is valid; digest {ctx.config.digest()[:12]}")
    return EXIT_OK


def config_show(ctx: Context, args: argparse.Namespace) -> int:
    body = ctx.config.model_dump(mode="json")
    if args.json:
        print_json(body)
    else:
        import yaml

        print(yaml.safe_dump(body, sort_keys=False), end="")
    return EXIT_OK


def config_init(ctx: Context, args: argparse.Namespace) -> int:
    from tasks.validation import DataReadError, read_table
    from tollgate.app.starter import StarterError, relative_data_path, render, starter_config
    from tollgate.config import ConfigError, load_config

    data = Path(args.data)
    out = Path(args.out) if args.out else Path("configs") / f"{data.stem}.yaml"
    if out.exists() and not args.force:
        raise UserError(f"{out} exists: choose another --out, or --force to replace it")
    try:
        frame = read_table(data)
        starter = starter_config(frame, args.target, args.task, relative_data_path(out, data), data.stem)
    except (DataReadError, StarterError) as exc:
        raise UserError(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(starter, str(data), args.target), encoding="utf-8")
    try:
        load_config(out, ctx.env)
    except ConfigError as exc:  # a guess the schema refuses: say so, keep the file to edit
        raise UserError(f"wrote {out}, but it does not pass config check:\n" + "\n".join(exc.problems)) from None
    print(f"wrote {out}: {len(frame)} rows, task {starter.body['model']['task']}, guesses marked in comments")
    print(f"next: tollgate --config {out} config check && tollgate --config {out} train")
    return EXIT_OK


def _generated_path(ctx: Context, scenario: str | None, out: str | None) -> Path:
    """Where `data generate` writes: --out, else data/periods/<scenario>.parquet, else dataset.path."""
    if out:
        return ctx.resolve(out)
    if scenario is not None:
        return ctx.root / "data" / "periods" / f"{scenario}.parquet"
    return ctx.resolve(ctx.config.dataset.path)


def data_generate(ctx: Context, args: argparse.Namespace) -> int:
    from tasks.data import file_md5, recorded_md5, track_snapshot
    from tollgate.synthetic import generate, write_parquet

    gen, ds = ctx.config.generation, ctx.config.dataset
    if gen is None:
        raise UserError(
            f"{ctx.loaded.path} has no 'generation' section: it describes your own data. "
            "Track your table with `dvc add` instead (see README: Bring your own data)."
        )
    production = args.scenario is not None
    frame = generate(gen, args.scenario or "none", production=production)
    out = _generated_path(ctx, args.scenario, args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(frame, str(out))
    span = f"{frame[ds.timestamp].min()} .. {frame[ds.timestamp].max()}"
    print(f"wrote {out} ({len(frame)} rows, {frame.shape[1]} columns, {span})")
    if production:
        print(f"scenario {args.scenario}: a production period after the training snapshot (labels included)")
        return EXIT_OK
    if args.out:
        return EXIT_OK
    before, md5 = recorded_md5(ctx.root, ds.path), file_md5(out)
    if before is not None and before != md5:
        warn(
            f"warning: the regenerated snapshot (md5 {md5}) differs from the version data.dvc records ({before}); "
            "data.dvc will record the new version: commit it if that is intended."
        )
    print("tracking with DVC (dvc add + push to the project's local remote) ...", flush=True)
    md5 = track_snapshot(ctx.root, ds.path)
    state = "matches the version data.dvc records" if before == md5 else "recorded in data.dvc"
    print(f"data version md5 {md5}: {state}")
    return EXIT_OK


def data_track(ctx: Context, args: argparse.Namespace) -> int:
    from tasks.data import track_snapshot

    rel = ctx.config.dataset.path
    if not ctx.resolve(rel).is_file():
        raise UserError(f"dataset.path {rel} ({ctx.resolve(rel)}) is not a file")
    print(f"tracking {rel} with DVC (dvc add, data.dvc, push to the default remote) ...", flush=True)
    print(f"data version md5 {track_snapshot(ctx.root, rel)} recorded in data.dvc: commit it")
    return EXIT_OK


def validate(ctx: Context, args: argparse.Namespace) -> int:
    from tasks.validation import DataReadError, validate_file

    say(f"validating {args.path}{' as serving-time data (the suite without the label)' if args.serving else ''} ...")
    try:
        with library_output():
            _, report = validate_file(
                args.path, ctx.config.dataset, ctx.paths.gx_root, serving=args.serving or None, keep=False
            )
    except DataReadError as exc:
        raise UserError(str(exc)) from None
    hint = "" if args.serving else " (--serving says so on purpose; training data needs the label)"
    for note in report.notes:
        warn(f"note: {note}{hint if 'label' in note else ''}")
    print(report.summary())
    if report.data_docs:
        print(f"Data Docs: {report.data_docs}")
    return EXIT_OK if report.passed else EXIT_NO


COMMANDS = [
    Command(
        "config check",
        "validate the config; every error names file, key path and reason",
        config_check,
        activate=False,
    ),
    Command(
        "config show",
        "print the resolved config (pipeline.yaml + overlay + TOLLGATE__* vars)",
        config_show,
        (arg("--json", action="store_true", help="print JSON instead of YAML"),),
        activate=False,
    ),
    Command(
        "config init",
        "write a commented starter config from a table (column types, label values, id and timestamp guessed "
        "and said so; segments left for you); it passes config check and trains as it is",
        config_init,
        (
            arg("--data", required=True, help="the table (.csv or .parquet)"),
            arg("--target", required=True, help="the column to predict"),
            arg(
                "--task",
                choices=("auto", "binary", "multiclass", "regression"),
                default="auto",
                help="auto: whole-number classes -> binary/multiclass, other numbers -> regression",
            ),
            arg("--out", default=None, help="where to write it (default configs/<table name>.yaml)"),
            arg("--force", action="store_true", help="replace --out if it exists"),
        ),
        activate=False,
    ),
    Command(
        "data generate",
        "(re)build the bundled training snapshot (tracked by DVC as data.dvc) or, with --scenario, a "
        "later production period in data/periods/",
        data_generate,
        (
            arg(
                "--scenario",
                choices=SCENARIOS,
                default=None,
                help="a production period: none, covariate_drift, concept_drift, segment_shift, faults",
            ),
            arg("--out", default=None, help="write here instead (not DVC-tracked)"),
        ),
    ),
    Command(
        "data track",
        "record the table at dataset.path as the training snapshot (dvc add -> data.dvc, dvc push)",
        data_track,
    ),
    Command(
        "validate",
        "Great Expectations gate on a .csv/.parquet file; per-column failures on stdout; exit 1 on failure, 2 if "
        "the file is unreadable. Without the label column the serving-time suite is used (and said so)",
        validate,
        (
            arg("path", help="the file to validate"),
            arg(
                "--serving",
                action="store_true",
                help="serving-time data (records as they arrive for scoring): the same suite without the label; "
                "a label column that is present is ignored, with a note",
            ),
        ),
    ),
]
