"""What `tollgate demo` did, as data: each step's outcome and facts, the registry, the ledger and the failed alert
deliveries. The printed summary and `tollgate demo --json` are two views of this one object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tollgate import ledger
from tollgate.context import Context
from tollgate.signals import alert_failures

GATE_PASSED_TAG, GATE_FAILURES_TAG = "tollgate.gate.passed", "tollgate.gate.failures"


@dataclass
class Step:
    """One step: its name, a one-line outcome, what the printed summary shows after it, and structured facts
    for `--json` (a fact may refine a shown value under the same key)."""

    name: str
    outcome: str
    shown: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "outcome": self.outcome, **self.shown, **self.facts}

    def line(self) -> str:
        extra = "; ".join(f"{k}={v}" for k, v in self.shown.items())
        return f"  {self.name:<26} {self.outcome}" + (f"  [{extra}]" if extra else "")


@dataclass
class DemoSummary:
    """The demo run: steps in order, the demo's names for versions (v1, v2, v3), and what `close` reads at the end."""

    model: str
    links: dict[str, str]
    steps: list[Step] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    registry: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[ledger.LedgerEntry] = field(default_factory=list)
    failed_alerts: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, outcome: str, shown: dict[str, Any] | None = None, /, **facts: Any) -> Step:
        """Record a step; returns it."""
        step = Step(name, outcome, shown or {}, facts)
        self.steps.append(step)
        return step

    def step(self, name: str) -> Step:
        """The step called `name` (KeyError when the demo did not get there)."""
        return next(s for s in self.steps if s.name == name)

    def close(self, ctx: Context, seconds: float) -> None:
        """Read the registry, the ledger and the failed alert deliveries as the run left them."""
        self.seconds = seconds
        self.registry = [
            {
                "version": info.version,
                "stage": info.stage,
                "gate_passed": {"true": True, "false": False}.get(info.tags.get(GATE_PASSED_TAG, "")),
                "gate_failures": info.tags.get(GATE_FAILURES_TAG, ""),
            }
            for info in ctx.registry.all_versions()
        ]
        self.ledger = ledger.read(ctx.paths.ledger, self.model)
        self.failed_alerts = alert_failures(ctx.paths, self.model)

    def to_dict(self) -> dict[str, Any]:
        """The JSON view (`tollgate demo --json`)."""
        names = {v: k for k, v in self.versions.items()}
        return {
            "model": self.model,
            "seconds": self.seconds,
            "state_folder": self.links.get("state folder"),
            "links": self.links,
            "versions": [{**row, "demo_name": names.get(row["version"])} for row in self.registry],
            "steps": [s.to_dict() for s in self.steps],
            "ledger_entries": len(self.ledger),
            "failed_alert_deliveries": len(self.failed_alerts),
            "failed_alerts": self.failed_alerts,
        }

    def lines(self, home: str) -> list[str]:
        """The printed summary."""
        out = ["\nversions"]
        for row in self.registry:
            gate = "?" if row["gate_passed"] is None else str(row["gate_passed"]).lower()
            out.append(f"  v{row['version']:<3} {row['stage']:<10} gate passed: {gate:<5} {row['gate_failures']}")
        out.append("\nsteps")
        out += [s.line() for s in self.steps]
        out.append("\nledger (last 8)")
        out += [
            f"  {e.at}  v{e.version:<3} {e.from_stage:>8} -> {e.to_stage:<10} {e.who[:24]:<24} {e.reason[:70]}"
            for e in self.ledger[-8:]
        ]
        out.append(f"\nfinished in {self.seconds} s")
        out += [f"  {name:<13} {link}" for name, link in self.links.items()]
        out.append(
            f"The stack keeps running so you can look around. Stop it with: TOLLGATE_HOME={home} .venv/bin/tollgate down"
        )
        return out


def drift_facts(result: dict[str, Any]) -> dict[str, Any]:
    """What a drift_check run found."""
    keys = (
        "version",
        "rows",
        "detected",
        "headline",
        "window",
        "drifted",
        "drift_share",
        "segments",
        "alerted",
        "report",
        "alerts",
    )
    return {k: result[k] for k in keys if k in result}


def gate_facts(verdict: dict[str, Any]) -> dict[str, Any]:
    """A gate verdict (GateVerdict.to_dict()) in brief: passed, against what, which scopes failed."""
    failures = [f"{c['scope']} {c['check']}" for c in verdict.get("checks", []) if c.get("status") == "fail"]
    return {"passed": verdict["passed"], "baseline": verdict["baseline"], "failures": failures}


def last_rollback(entries: list[ledger.LedgerEntry]) -> dict[str, Any] | None:
    """The latest rollback in a model's ledger: from, to, when, who and why (None when there was none)."""
    back = next((e for e in reversed(entries) if e.to_stage == "Production" and e.reason.startswith("rollback:")), None)
    if back is None:
        return None
    replaced = next(
        (
            e.version
            for e in reversed(entries)
            if e.from_stage == "Production" and e.reason.startswith(f"replaced by version {back.version}: rollback:")
        ),
        None,
    )
    return {"from": replaced, "to": back.version, "at": back.at, "who": back.who, "reason": back.reason}
