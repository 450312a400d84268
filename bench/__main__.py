"""Run every benchmark module in bench/ (or the ones named on the command line) in one process run."""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run the named benchmarks (default: all); returns the exit code."""
    here = Path(__file__).parent
    names = argv or sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    if not names:
        print("no benchmarks in bench/ yet")
        return 0
    from bench.common import bench_context, bench_stack

    # First, before any benchmark imports Prefect: Prefect reads its client settings (ports) once per process.
    ctx = bench_context()
    try:
        modules = {name: importlib.import_module(f"bench.{name}") for name in names}
        for name, module in modules.items():  # benchmarks that need no servers run first, on a quiet machine
            if not getattr(module, "NEEDS_STACK", True):
                print(f"== {name}", flush=True)
                module.main(None)
        stacked = [name for name, module in modules.items() if getattr(module, "NEEDS_STACK", True)]
        if stacked:
            with bench_stack(ctx) as stack:  # one throw-away stack for the rest
                for name in stacked:
                    print(f"== {name}", flush=True)
                    modules[name].main(stack)
    finally:
        shutil.rmtree(ctx.paths.home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
