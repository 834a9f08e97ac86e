"""Reconnect backoff and the session-wide failure budget (pure: the caller passes the clock).

A connection that fails right after ``ready`` must not reset the budget, or a server that accepts
and then closes gets hundreds of connections a second. Failures therefore count until a
connection has been *healthy* (ready and alive) for ``healthy_after_s``; only then do the
attempt count and the delay start again from the beginning.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: A connection must stay up this long before its predecessors' failures are forgiven.
HEALTHY_AFTER_S = 10.0


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with jitter over a streak of failures.

    Attributes:
        base_s: First delay.
        cap_s: Largest delay.
        max_failures: Failures in one streak before giving up (``None``: never).
        budget_s: Seconds from the first failure of a streak before giving up (``None``: never).
        healthy_after_s: Uptime after which a connection ends the streak.
        rng: Jitter source (seeded in tests).
    """

    base_s: float
    cap_s: float
    max_failures: int | None
    budget_s: float | None
    healthy_after_s: float = HEALTHY_AFTER_S
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    streak_start: float | None = None
    healthy_since: float | None = None

    def connected(self, now: float) -> None:
        """A connection became usable (``ready``) at ``now``: it may end the streak later."""
        self.healthy_since = now

    def disconnected(self) -> None:
        """The usable connection went away: its uptime no longer counts."""
        self.healthy_since = None

    def forgive(self, now: float) -> bool:
        """End the streak when the current connection has been healthy long enough."""
        if (
            self.failures
            and self.healthy_since is not None
            and now - self.healthy_since >= self.healthy_after_s
        ):
            self.failures = 0
            self.streak_start = None
            return True
        return False

    def healthy_deadline(self) -> float | None:
        """When :meth:`forgive` would end the current streak, if it can."""
        if self.failures and self.healthy_since is not None:
            return self.healthy_since + self.healthy_after_s
        return None

    def failure(self, now: float) -> float | None:
        """Record a failure at ``now``; return the delay before the next attempt, or ``None`` to give up."""
        self.forgive(now)
        self.healthy_since = None
        if self.streak_start is None:
            self.streak_start = now
        self.failures += 1
        if self.max_failures is not None and self.failures > self.max_failures:
            return None
        delay: float = min(self.cap_s, self.base_s * 2.0 ** (self.failures - 1)) * self.rng.uniform(0.5, 1.5)
        if self.budget_s is not None and now + delay - self.streak_start > self.budget_s:
            return None
        return delay
