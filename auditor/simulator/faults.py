"""What goes wrong with each request, decided by hash, not by chance or by order.

The n-th request for a given key (a call id, or a List Calls query) always meets the
same fate for a given seed, however requests interleave: a failing test replays exactly.
"""

from __future__ import annotations

import enum
import hashlib
import math
import statistics
from dataclasses import dataclass

from auditor.simulator.config import SimConfig
from auditor.simulator.rand import derive_key

LATENCY_SIGMA = 0.6  # lognormal spread: p50 ≈ 0.84 x mean, p99 ≈ 3.4 x mean
LATENCY_CAP = 20.0  # x mean: the tail stays finite
_NORMAL = statistics.NormalDist()


class Fault(enum.Enum):
    RESET_BEFORE_HEADERS = "reset-before-headers"
    RESET_MID_BODY = "reset-mid-body"
    TRUNCATE = "truncate"
    SLOW = "slow"
    ERROR_500 = "error-500"
    ERROR_503 = "error-503"


@dataclass(frozen=True, slots=True)
class Plan:
    latency: float  # seconds to wait before answering
    fault: Fault | None
    cut: float  # where a truncated/reset body is cut, as a fraction of its length


class FaultPlanner:
    """Plans each request from ``hash(seed, key, n)``; n counts requests per key."""

    __slots__ = ("_bounds", "_cfg", "_counts", "_key", "enabled")

    def __init__(self, cfg: SimConfig) -> None:
        self._cfg = cfg
        self._key = derive_key(cfg.seed, "faults")
        self._counts: dict[str, int] = {}
        self.enabled = cfg.latency_ms > 0 or cfg.fault_rate > 0
        acc = 0.0
        bounds: list[tuple[float, str]] = []
        for name, rate in (("reset", cfg.reset_rate), ("truncate", cfg.truncate_rate),
                           ("slow", cfg.slow_rate), ("error", cfg.error_rate)):
            acc += rate
            bounds.append((acc, name))
        self._bounds = tuple(bounds)

    def next(self, key: str) -> Plan:
        """Plan the next request for *key*."""
        n = self._counts.get(key, 0)
        self._counts[key] = n + 1
        return plan_for(self._cfg, self._key, self._bounds, key, n)


def plan_for(cfg: SimConfig, hkey: bytes, bounds: tuple[tuple[float, str], ...],
             key: str, n: int) -> Plan:
    digest = hashlib.blake2b(f"{key}\x00{n}".encode(), key=hkey, digest_size=12).digest()
    u_fault, u_latency, u_sub = (
        (int.from_bytes(digest[i:i + 4], "big") + 0.5) / 4294967296.0 for i in (0, 4, 8)
    )
    fault: Fault | None = None
    for upper, name in bounds:
        if u_fault < upper:
            fault = _choose(name, u_sub)
            break
    return Plan(latency_seconds(cfg.latency_ms, u_latency), fault, 0.1 + 0.8 * u_sub)


def latency_seconds(mean_ms: float, u: float) -> float:
    """Lognormal delay with the given mean, at quantile *u* in (0, 1)."""
    if mean_ms <= 0:
        return 0.0
    mu = math.log(mean_ms) - LATENCY_SIGMA**2 / 2  # so that the mean is mean_ms
    ms = math.exp(mu + LATENCY_SIGMA * _NORMAL.inv_cdf(u))
    return min(ms, LATENCY_CAP * mean_ms) / 1000.0


def _choose(name: str, u: float) -> Fault:
    if name == "reset":
        return Fault.RESET_BEFORE_HEADERS if u < 0.5 else Fault.RESET_MID_BODY
    if name == "error":
        return Fault.ERROR_500 if u < 0.5 else Fault.ERROR_503
    return Fault.TRUNCATE if name == "truncate" else Fault.SLOW
