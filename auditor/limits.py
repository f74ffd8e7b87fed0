"""The account-wide request rate: a strict ceiling, and an adaptive rate below it.

Two stages, each one small exact algorithm:

1. :func:`ceiling_limiter` is an :class:`aiolimiter.AsyncLimiter` sized so that **no
   sliding 1-second window ever holds more than the configured rate**.  A leaky bucket of
   capacity ``b`` draining at ``r`` per second admits at most ``floor(b + r*T)`` requests
   in any interval of length ``T``.  ``AsyncLimiter(R, 1)`` has ``b = R`` and so admits
   up to ``2R`` in some window.  Here ``b`` is tiny (1 below 500 req/s, 0.4 % of R above)
   and ``r = 0.985 R``, which keeps ``floor(b + r*(1 + 10 ms jitter))`` at or under ``R``
   while still delivering 98.5 % of it.  The small ``b`` absorbs event-loop lateness so the
   achieved rate does not sag below ``r``.

2. :class:`AdaptiveRate` is CUBIC congestion control as in the AWS SDKs' adaptive retry
   mode.  It is dormant until the first 429.  A 429 cuts the rate to ``beta`` (0.7) times
   what it was; afterwards the rate regrows along ``W(t) = C*(t - K)**3 + W_max`` with
   ``K = cbrt(W_max * (1 - beta) / C)``: quickly at first, flat near the rate that last
   failed, then probing above it.  Only a 429 for a request sent *after* the latest cut
   cuts again, so one burst of 429s costs one cut, not dozens.  :class:`AdaptivePacer`
   spaces requests at that rate (GCRA: each caller reserves the next free slot).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

#: Share of the configured rate the ceiling drains at; the rest absorbs network jitter.
CEILING_HEADROOM = 0.985


def ceiling_params(rate: float) -> tuple[float, float]:
    """Bucket capacity ``b`` and drain rate ``r`` for a configured rate of *rate* req/s."""
    capacity = float(max(1, math.floor(rate * 0.004)))
    return capacity, rate * CEILING_HEADROOM


def ceiling_limiter(rate: float) -> AsyncLimiter:
    """An AsyncLimiter that never lets more than *rate* requests into any 1-second window."""
    capacity, drain = ceiling_params(rate)
    return AsyncLimiter(capacity, capacity / drain)


@dataclass
class AdaptiveRate:
    """CUBIC rate control (AWS SDK adaptive retry): cut on throttling, regrow smoothly.

    ``rate(now)`` is None until the first throttle, meaning "no adaptive limit".
    """

    ceiling: float
    floor: float = 0.5
    beta: float = 0.7
    scale: float = 0.4  # C, in req/s per s**3, as the AWS SDKs use
    _w_max: float = 0.0
    _k: float = 0.0
    _cut_at: float | None = None
    cuts: int = 0
    min_rate: float | None = None
    _last_rate: float | None = field(default=None, repr=False)

    def rate(self, now: float) -> float | None:
        if self._cut_at is None:
            return None
        t = now - self._cut_at
        value = self.scale * (t - self._k) ** 3 + self._w_max
        self._last_rate = min(self.ceiling, max(self.floor, value))
        return self._last_rate

    def on_throttle(self, sent_at: float, now: float, measured: float | None = None) -> bool:
        """Record a 429 for a request sent at *sent_at*; True when it caused a cut.

        *measured* is the send rate achieved lately.  The first cut starts from it rather
        than from a configured ceiling the client may never have reached; later cuts start
        from the adaptive rate itself.
        """
        if self._cut_at is not None and sent_at <= self._cut_at:
            return False
        current = self.rate(now)
        if current is None:  # first throttle: start from what was really being sent
            current = self.ceiling if measured is None else min(self.ceiling, measured)
        self._w_max = current
        self._k = (self._w_max * (1 - self.beta) / self.scale) ** (1 / 3)
        self._cut_at = now
        self.cuts += 1
        cut = max(self.floor, current * self.beta)
        self.min_rate = cut if self.min_rate is None else min(self.min_rate, cut)
        return True

    @property
    def last_rate(self) -> float | None:
        """The adaptive rate as last computed, for the run summary."""
        return self._last_rate


class AdaptivePacer:
    """Spaces acquisitions at the adaptive rate; free while that rate is dormant.

    Callers queue on a FIFO lock and only the head one sleeps, so each gap is computed from
    the rate *at admission*: when the rate regrows, the queue speeds up at once instead of
    draining slots reserved at an older, lower rate.
    """

    def __init__(self, control: AdaptiveRate, clock: Callable[[], float] = time.monotonic):
        self.control = control
        self._clock = clock
        self._lock = asyncio.Lock()
        self._last = -math.inf

    async def acquire(self) -> None:
        if self.control.rate(self._clock()) is None:
            return
        async with self._lock:
            while True:
                now = self._clock()
                rate = self.control.rate(now)
                if rate is None:
                    return
                wait = self._last + 1.0 / rate - now
                if wait <= 0:
                    self._last = now
                    return
                await asyncio.sleep(wait)


class RateGate:
    """What a worker awaits before each request: adaptive pacing, then the strict ceiling."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic):
        self.configured = rate
        self._clock = clock
        self._ceiling = ceiling_limiter(rate) if rate else None
        self.adaptive = AdaptiveRate(ceiling=rate * CEILING_HEADROOM if rate else math.inf)
        self._pacer = AdaptivePacer(self.adaptive, clock)
        self._window_start = clock()
        self._window_count = 0
        self.measured: float | None = None

    async def acquire(self) -> float:
        """Wait for permission to send; returns the send time, for :meth:`throttled`."""
        await self._pacer.acquire()
        if self._ceiling is not None:
            await self._ceiling.acquire()
        now = self._clock()
        self._window_count += 1
        if now - self._window_start >= 0.5:
            self.measured = self._window_count / (now - self._window_start)
            self._window_start, self._window_count = now, 0
        return now

    def throttled(self, sent_at: float) -> None:
        self.adaptive.on_throttle(sent_at, self._clock(), self.measured)
