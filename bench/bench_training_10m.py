"""Training and validation at 10M rows (the bundled generator at ~830x), as bench_training at 1.2M: validation
streams the file in chunks (dataset.validate_chunk_rows) so its peak stays bounded; training holds the table.
Targets: `validate_10m_peak_rss_mb` <= 2,000, `train_10m_peak_rss_mb` <= 8,000, `train_10m_overhead_ratio`
<= 2.0 (whole-process wall over the run's own fit + predict seconds). ~8 min on 2 cores."""

from __future__ import annotations

from bench.bench_training import measure_size
from bench.common import BenchStack

NEEDS_STACK = True
ROWS = 10_000_000
TARGETS = {"validate_10m_peak_rss_mb": 2000.0, "train_10m_peak_rss_mb": 8000.0, "train_10m_overhead_ratio": 2.0}


def main(st: BenchStack) -> None:
    measure_size(st, ROWS, "10m", TARGETS)
