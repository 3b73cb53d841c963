"""A circuit breaker per deployment, so a dead server costs one failed try, not one per request.

closed --(N failures in a row)--> open --(cooldown, or a good health probe after it)--> half-open
half-open lets exactly one request through: success closes, failure re-opens.
Time is passed in (monotonic seconds) so the rule is testable without sleeping.
"""

from __future__ import annotations

from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    __slots__ = ("_cooldown", "_failures", "_open_until", "_probe_out", "_threshold", "state")

    def __init__(self, failures: int = 3, cooldown: float = 5.0) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._failures = 0
        self._open_until = 0.0
        self._probe_out = False
        self.state: State = "closed"

    def available(self, now: float) -> bool:
        """May a request be sent now? Does not change state (ranking calls it for every candidate)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            return now >= self._open_until
        return not self._probe_out

    def on_attempt(self, now: float) -> None:
        """A request is being sent; past the cooldown it becomes the single half-open probe."""
        if self.state == "open" and now >= self._open_until:
            self.state = "half_open"
        if self.state == "half_open":
            self._probe_out = True

    def on_success(self) -> None:
        self.state = "closed"
        self._failures = 0
        self._probe_out = False

    def on_failure(self, now: float) -> None:
        self._failures += 1
        self._probe_out = False
        if self.state == "half_open" or self._failures >= self._threshold:
            self.state = "open"
            self._open_until = now + self._cooldown

    def on_probe_success(self, now: float) -> None:
        """A background health probe answered: past the cooldown, let real traffic test the deployment."""
        if self.state == "open" and now >= self._open_until:
            self.state = "half_open"
            self._probe_out = False

    def on_probe_failure(self, now: float) -> None:
        """A dead server opens its breaker even when no request has hit it yet."""
        if self.state == "open":
            self._open_until = max(self._open_until, now + self._cooldown)
            return
        self.on_failure(now)
