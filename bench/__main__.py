"""Run every benchmark module in bench/ (or the ones named on the command line) in one process run."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run the named benchmarks (default: all); returns the exit code."""
    here = Path(__file__).parent
    names = argv or sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    if not names:
        print("no benchmarks in bench/ yet")
        return 0
    from bench.common import bench_stack

    modules = {name: importlib.import_module(f"bench.{name}") for name in names}
    for name, module in modules.items():  # benchmarks that need no servers run first, on a quiet machine
        if not getattr(module, "NEEDS_STACK", True):
            print(f"== {name}", flush=True)
            module.main(None)
    stacked = [name for name, module in modules.items() if getattr(module, "NEEDS_STACK", True)]
    if stacked:
        # One throw-away stack for the rest: Prefect reads its settings (ports) once per process.
        with bench_stack() as stack:
            for name in stacked:
                print(f"== {name}", flush=True)
                modules[name].main(stack)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
