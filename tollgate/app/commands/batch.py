"""Batch scoring: predict (batch_inference)."""

from __future__ import annotations

import argparse

from tollgate.app.commands.base import EXIT_OK, CheckFailed, Command, UserError, arg, print_json, require_stack
from tollgate.app.output import library_output
from tollgate.context import Context


def predict(ctx: Context, args: argparse.Namespace) -> int:
    if args.version is not None and args.stage is not None:
        raise UserError("--version and --stage name the release two ways: give one")
    if args.chunk_rows is not None and args.chunk_rows < 1:
        raise UserError(f"--chunk-rows must be at least 1, not {args.chunk_rows}")
    require_stack(ctx)
    from flows.batch import batch_inference
    from tasks.batch import BatchError, TooManyRejects
    from tasks.validation import DataReadError
    from tollgate.provenance import UntrustedRelease
    from tollgate.registry import RegistryError

    try:
        with library_output(json_only=args.json):
            result = batch_inference(
                input=str(ctx.resolve(args.input)),
                output=str(ctx.resolve(args.output)),
                version=args.version,
                stage=args.stage or "Production",
                chunk_rows=args.chunk_rows,
                config=ctx,
            )
    except (BatchError, DataReadError, RegistryError, UntrustedRelease) as exc:
        raise UserError(str(exc)) from None
    except TooManyRejects as exc:
        raise CheckFailed(str(exc)) from None
    if args.json:
        print_json(result, indent=None)
        return EXIT_OK
    print(
        f"scored {result['scored']:,} of {result['rows']:,} rows with {result['model']} v{result['version']} into "
        f"{result['output']} ({result['parts']} parts, {result['rows_per_s']:,.0f} rows/s); "
        f"logged as role batch for drift checks and backfill"
    )
    if result["rejected"]:
        print(f"  {result['rejected']:,} rows failed the serving rules, not scored: {', '.join(result['rejects'])}")
    print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["phases"].items()))
    if result["skipped"]:
        print(f"  {result['skipped']} parts were done by an earlier run and kept")
    return EXIT_OK


COMMANDS = [
    Command(
        "predict",
        "run batch_inference: score a .parquet/.csv file in chunks with the served (Production) release under the "
        "serving rules; rows failing them go to rejects files; every scored row is logged (role batch); "
        "a rerun into the same OUTPUT resumes; exit 1 when a chunk's rejected share is over "
        "batch.max_reject_share",
        predict,
        (
            arg("input", help="the table to score (.parquet or .csv)"),
            arg("output", help="a new or empty folder (or the folder of an interrupted run of the same input)"),
            arg("--version", default=None, help="score with this registered version instead of Production"),
            arg(
                "--stage",
                choices=("Production", "Staging"),
                default=None,
                help="score with the version the promotion ledger holds in this stage (default Production)",
            ),
            arg("--chunk-rows", type=int, default=None, help="rows per chunk (default batch.chunk_rows)"),
            arg("--json", action="store_true", help="print the result as one JSON object, nothing else on stdout"),
        ),
    ),
]
