"""Leases on a gateway's challenger: a shadow/canary rollout holds one while its controller is alive.

The controller renews it (POST /admin/lease) while a phase waits for traffic and before the approval wait; a
challenger the gateway loads with no lease known (a new rollout, a gateway restart) gets the release's
rollout.lease_s as grace. Times are time.monotonic() seconds, passed in, so the decision is a pure function.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Leases:
    """Deadline per challenger version, in monotonic seconds."""

    deadlines: dict[str, float] = field(default_factory=dict)

    def grant(self, version: str, until_s: float, now: float) -> float:
        """Hold `version` for `until_s` seconds from `now` (replacing any earlier deadline); returns the deadline."""
        self.deadlines[version] = now + until_s
        return self.deadlines[version]

    def ensure(self, version: str, grace_s: float, now: float) -> float:
        """The deadline of `version`, granting `grace_s` from `now` when none is known."""
        return self.deadlines.setdefault(version, now + grace_s)

    def lapsed(self, challenger: str | None, now: float) -> bool:
        """True when the challenger has a lease and it has passed (no challenger, or none known: False)."""
        return lapsed(challenger, self.deadlines.get(challenger) if challenger else None, now)

    def forget(self, version: str) -> None:
        """Drop the lease of `version` (its rollout stopped)."""
        self.deadlines.pop(version, None)


def lapsed(challenger: str | None, deadline: float | None, now: float) -> bool:
    """Whether a challenger's rollout must stop: there is one, it has a deadline, and `now` is past it."""
    return challenger is not None and deadline is not None and now > deadline
