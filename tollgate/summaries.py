"""Typed results that flows return and the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.data import DataVersion
from tasks.gates import GateVerdict


@dataclass(frozen=True)
class TrainingResult:
    """What training_pipeline produced: the version, its stage and the evidence."""

    version: str
    stage: str
    verdict: GateVerdict
    run_id: str
    data: DataVersion
    overall: dict[str, float]
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "stage": self.stage,
            "run_id": self.run_id,
            "verdict": self.verdict.to_dict(),
            "data": self.data.to_dict(),
            "overall": self.overall,
            "timings": self.timings,
        }
