"""Strict sliding one-second window: the limiter, and the exact peak counter.

Both look at the window ``(t - 1 s, t]`` that ends at each admission, which is where the
count of any sliding window peaks, so both are exact, not bucketed approximations.
"""

from __future__ import annotations

import math
from collections import deque

WINDOW = 1.0


class SlidingWindowLimiter:
    """Admit at most *limit* requests in any sliding one-second window."""

    __slots__ = ("_admitted", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._admitted: deque[float] = deque()

    def try_admit(self, now: float) -> float | None:
        """Admit (return None) or refuse, returning seconds until the window frees a slot."""
        admitted = self._admitted
        while admitted and admitted[0] <= now - WINDOW:
            admitted.popleft()
        if len(admitted) < self._limit:
            admitted.append(now)
            return None
        return admitted[0] + WINDOW - now


class WindowPeak:
    """The most events seen in any sliding one-second window, computed exactly."""

    __slots__ = ("_events", "peak")

    def __init__(self) -> None:
        self._events: deque[float] = deque()
        self.peak = 0

    def add(self, now: float) -> None:
        events = self._events
        events.append(now)
        while events[0] <= now - WINDOW:
            events.popleft()
        if len(events) > self.peak:
            self.peak = len(events)

    def clear(self) -> None:
        self._events.clear()
        self.peak = 0


def retry_after_seconds(wait: float) -> int:
    """Retry-After delay-seconds: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))
