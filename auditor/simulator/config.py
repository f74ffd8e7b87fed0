"""The simulator's knobs: one frozen dataclass, validated once at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Burst:
    """A dense cluster of call start times.

    *calls* calls are created evenly over ``[now - seconds_ago, now - seconds_ago + duration]``
    (on top of the background traffic), so that tests can build windows that hold more
    than List Calls' 10,000-per-query cap.
    """

    seconds_ago: float
    calls: int
    duration: float = 60.0

    def __post_init__(self) -> None:
        if self.calls < 0:
            raise ValueError("Burst.calls must be >= 0")
        if not self.duration > 0:
            raise ValueError("Burst.duration must be > 0")
        if not math.isfinite(self.seconds_ago):
            raise ValueError("Burst.seconds_ago must be finite")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything that shapes the simulated account and how its API behaves.

    The population is a pure function of ``(seed, calls, now, span_days, visibility_delay,
    young_fraction, recent_fraction, bursts)``; the fault and latency schedule is a pure
    function of ``seed`` and the rates. Nothing depends on request order or wall time,
    except the sliding-window rate limiter, which is about real request timing, and the
    clock when ``frozen_clock`` is False.
    """

    calls: int = 1000
    seed: int = 1
    account_id: str = "9900000"
    client_id: str = "sim-client"
    client_secret: str = "sim-secret"
    username: str = "sim-user"
    password: str = "sim-pass"
    token_ttl: float = 3600.0
    visibility_delay: float = 60.0
    rate: float | None = None
    retry_after_http_date: bool = False
    latency_ms: float = 0.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    truncate_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 60.0
    span_days: float = 8.0
    young_fraction: float = 0.01
    bursts: tuple[Burst, ...] = ()
    now: float | None = None
    # Share of calls created in the last 15 minutes (but already visible), so that a
    # population holds calls that are still queued, ringing or talking.
    recent_fraction: float = 0.02
    # Frozen (the default in-process): the simulated clock moves only with advance(), so
    # what is served is exactly reproducible and Population.body() equals what a client
    # fetched a moment ago. Not frozen (the CLI's default): it also follows real time, so
    # calls progress and tokens expire on their own in a long-running server.
    frozen_clock: bool = True

    def __post_init__(self) -> None:
        if self.calls < 0:
            raise ValueError("calls must be >= 0")
        if self.calls >= 1 << 48:
            raise ValueError("calls must be < 2**48 (the call id holds a 48-bit index)")
        for name in ("error_rate", "reset_rate", "truncate_rate", "slow_rate",
                     "young_fraction", "recent_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.fault_rate > 1.0 + 1e-9:
            raise ValueError("error_rate + reset_rate + truncate_rate + slow_rate must be <= 1")
        if self.young_fraction + self.recent_fraction > 1.0:
            raise ValueError("young_fraction + recent_fraction must be <= 1")
        if self.rate is not None and not self.rate >= 1.0:
            raise ValueError("rate must be >= 1 request per second (or None for no limit)")
        if not self.token_ttl > 0:
            raise ValueError("token_ttl must be > 0")
        if not self.visibility_delay >= 0:
            raise ValueError("visibility_delay must be >= 0")
        if not self.latency_ms >= 0:
            raise ValueError("latency_ms must be >= 0")
        if not self.slow_seconds >= 0:
            raise ValueError("slow_seconds must be >= 0")
        if not self.span_days * 86400.0 > self.visibility_delay:
            raise ValueError("span_days must cover more than visibility_delay")
        if sum(b.calls for b in self.bursts) > self.calls:
            raise ValueError("bursts hold more calls than the population")
        if not self.account_id:
            raise ValueError("account_id must not be empty")

    @property
    def fault_rate(self) -> float:
        """Probability that a request meets any fault."""
        return self.error_rate + self.reset_rate + self.truncate_rate + self.slow_rate

    @property
    def rate_limit(self) -> int | None:
        """Requests admitted per sliding second (a float rate is floored, at least 1)."""
        return None if self.rate is None else max(1, math.floor(self.rate))
