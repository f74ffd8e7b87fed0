"""The rate gate: the strict ceiling, and CUBIC adaptation on throttling."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest
from aiolimiter import AsyncLimiter

from auditor.limits import AdaptivePacer, AdaptiveRate, RateGate, ceiling_params


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


def test_a_429_within_the_servers_retry_after_is_the_same_congestion_event() -> None:
    control = AdaptiveRate(ceiling=1000.0)
    assert control.on_throttle(sent_at=0.4, now=0.5, measured=500.0, hold=1.0)
    # A sliding-window server refuses until what was sent before the cut has left its
    # window: 429s for requests sent in that time say nothing about the new rate.
    assert not control.on_throttle(sent_at=0.9, now=0.91, measured=400.0, hold=1.0)
    assert not control.on_throttle(sent_at=1.5, now=1.51, measured=400.0, hold=1.0)
    assert control.cuts == 1 and control.rate(1.51) is not None
    assert control.on_throttle(sent_at=1.6, now=1.61, measured=400.0, hold=1.0)
    assert control.cuts == 2


def test_a_cut_starts_from_what_was_really_sent_when_that_is_lower() -> None:
    control = AdaptiveRate(ceiling=1000.0)
    control.on_throttle(sent_at=0.0, now=0.1, measured=600.0)
    control.on_throttle(sent_at=50.0, now=50.0, measured=300.0)  # the adaptive rate is higher
    assert control.rate(50.0) == pytest.approx(0.7 * 300.0)


def test_last_rate_is_the_adaptive_rate_averaged_over_time() -> None:
    control = AdaptiveRate(ceiling=1000.0, settle_seconds=10.0)
    assert control.last_rate is None
    control.on_throttle(sent_at=0.0, now=0.0, measured=500.0)
    rates = [control.rate(t / 10) for t in range(0, 600)]  # a minute, sampled
    mean = control.last_rate
    assert mean is not None
    assert min(r for r in rates if r is not None) < mean < max(r for r in rates if r is not None)


class _FakeTime:
    """A clock that only moves when the pacer sleeps, and always wakes it *late*."""

    def __init__(self, lateness: float) -> None:
        self.now = 0.0
        self.lateness = lateness

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self.lateness


async def test_pacer_keeps_its_rate_when_every_wake_up_is_late(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _FakeTime(lateness=0.001)  # epoll counts whole milliseconds
    monkeypatch.setattr("auditor.limits.asyncio.sleep", fake.sleep)
    control = AdaptiveRate(ceiling=1000.0)
    control.on_throttle(sent_at=-1.0, now=0.0, measured=500.0)
    control.scale = 0.0  # no CUBIC curve: the rate stays at 500/s for the test
    assert control.rate(0.0) == 500.0
    pacer = AdaptivePacer(control, fake.clock)
    for _ in range(3500):
        await pacer.acquire()
    # 3,500 requests at 500/s take 7 s, lateness or not (spacing each from the late
    # wake-up before it would take 3,500 x (1/500 + 0.001) = 10.5 s).
    assert fake.now == pytest.approx(7.0, abs=0.02)


def test_gate_measures_what_it_sent_in_the_last_second() -> None:
    now = [0.0]
    gate = RateGate(None, clock=lambda: now[0])
    for i in range(300):
        now[0] = i / 200  # 200 requests a second, for 1.5 s
        assert gate.admit_now() == now[0]
    assert gate.measured == 200.0
    now[0] += 2.0
    assert gate.measured == 0.0


def test_gate_admits_without_waiting_only_while_nothing_limits() -> None:
    assert RateGate(None).admit_now() is not None
    assert RateGate(50.0).admit_now() is None  # a rate: through the ceiling
    gate = RateGate(None)
    gate.throttled(gate.admit_now() or 0.0, retry_after=1.0)  # a 429: adaptive from now on
    assert gate.admit_now() is None
