"""The rate gate: the strict ceiling, and CUBIC adaptation on throttling."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest
from aiolimiter import AsyncLimiter

from auditor.limits import AdaptiveRate, RateGate, ceiling_params


def _max_in_window(times: list[float], window: float = 1.0) -> int:
    """Most events in any half-open window (t - window, t]."""
    recent: deque[float] = deque()
    best = 0
    for t in sorted(times):
        recent.append(t)
        while recent[0] <= t - window:
            recent.popleft()
        best = max(best, len(recent))
    return best


async def _admissions(acquire: object, seconds: float, workers: int = 50) -> list[float]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    times: list[float] = []

    async def worker() -> None:
        while loop.time() < end:
            await acquire()  # type: ignore[operator]
            times.append(loop.time())

    await asyncio.gather(*(worker() for _ in range(workers)))
    return times


@pytest.mark.parametrize("rate", [5.0, 50.0, 400.0])
def test_ceiling_math_never_exceeds_the_rate_in_a_window(rate: float) -> None:
    capacity, drain = ceiling_params(rate)
    # A leaky bucket admits at most floor(b + r*T); allow 1 % timing jitter on T = 1 s.
    assert int(capacity + drain * 1.01) <= rate
    assert drain >= 0.98 * rate


async def test_gate_holds_the_ceiling_where_a_plain_limiter_bursts_to_double() -> None:
    rate = 300.0
    plain = AsyncLimiter(rate, 1)
    plain_times = await _admissions(plain.acquire, 1.3)
    assert _max_in_window(plain_times) > 1.5 * rate  # the burst the design must avoid

    gate = RateGate(rate)
    times = await _admissions(gate.acquire, 1.3)
    assert _max_in_window(times) <= rate
    assert len(times) > 0.5 * rate  # it does admit, at a pace


def test_adaptive_rate_is_dormant_until_the_first_throttle() -> None:
    control = AdaptiveRate(ceiling=1000.0)
    assert control.rate(0.0) is None
    assert control.on_throttle(sent_at=9.0, now=10.0, measured=800.0)
    assert control.rate(10.0) == pytest.approx(560.0)  # beta * measured
    assert control.cuts == 1 and control.min_rate == pytest.approx(560.0)


def test_adaptive_rate_cuts_once_per_burst_of_429s() -> None:
    control = AdaptiveRate(ceiling=1000.0)
    control.on_throttle(sent_at=9.0, now=10.0, measured=800.0)
    # 429s for requests sent before the cut are the same congestion event
    assert not control.on_throttle(sent_at=9.5, now=10.1, measured=800.0)
    assert control.cuts == 1
    assert control.on_throttle(sent_at=10.2, now=10.3, measured=600.0)
    assert control.cuts == 2


def test_adaptive_rate_regrows_along_a_cubic_to_the_last_failing_rate() -> None:
    control = AdaptiveRate(ceiling=1000.0)
    control.on_throttle(sent_at=0.0, now=1.0, measured=500.0)
    k = (500.0 * 0.3 / 0.4) ** (1 / 3)
    rates = [control.rate(1.0 + t) for t in (0.0, k / 2, k, k + 2, k + 6)]
    assert rates[0] == pytest.approx(350.0)
    assert rates[0] < rates[1] < rates[2]  # concave regrowth
    assert rates[2] == pytest.approx(500.0)  # plateau at the rate that failed
    assert rates[2] < rates[3] < rates[4]  # then probes above it
    assert control.rate(1000.0) == 1000.0  # never above the ceiling
