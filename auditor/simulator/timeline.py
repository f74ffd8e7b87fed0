"""When each call was created: a monotone function of its index.

The population's creation times follow a piecewise-linear cumulative distribution over
the span: background traffic, a busier last quarter hour (so some calls are still
active), the not-yet-visible young calls, and any configured bursts. Call *i* is created
at ``F⁻¹(i + u_i)``, where ``u_i`` in [0, 1) is a per-call hash: spacing looks irregular,
yet ``created_ms`` never decreases with the index. That makes every time-window question
("which calls were created between t0 and t1?") a binary search over indices, in O(log n)
time and O(1) memory, however large the population.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

from auditor.simulator.config import SimConfig
from auditor.simulator.rand import derive_key, uniform64

RECENT_WINDOW_S = 900.0  # the "busier" tail that recent_fraction lands in


@dataclass(frozen=True, slots=True)
class _Component:
    start_ms: float
    end_ms: float
    calls: float


def _components(cfg: SimConfig, anchor_ms: float) -> list[_Component]:
    vd_ms = cfg.visibility_delay * 1000.0
    span_ms = cfg.span_days * 86_400_000.0
    young = round(cfg.calls * cfg.young_fraction)
    recent_start = max(anchor_ms - RECENT_WINDOW_S * 1000.0, anchor_ms - span_ms)
    recent = round(cfg.calls * cfg.recent_fraction) if recent_start < anchor_ms - vd_ms else 0
    bursts = sum(b.calls for b in cfg.bursts)
    # Bursts are exact; young and recent give way when a small population cannot hold all.
    spare = cfg.calls - bursts
    recent = min(recent, spare)
    young = min(young, spare - recent)
    if vd_ms <= 0:
        young = 0
    base = cfg.calls - bursts - recent - young
    comps = [
        _Component(anchor_ms - span_ms, anchor_ms - vd_ms, base),
        _Component(recent_start, anchor_ms - vd_ms, recent),
        _Component(anchor_ms - vd_ms, anchor_ms, young),
    ]
    for b in cfg.bursts:
        start = anchor_ms - b.seconds_ago * 1000.0
        comps.append(_Component(start, start + b.duration * 1000.0, b.calls))
    return [c for c in comps if c.calls > 0 and c.end_ms > c.start_ms]


class Timeline:
    """``created_ms(i)``: epoch ms at which call *i* was created (non-decreasing in *i*)."""

    __slots__ = ("_counts", "_jitter_key", "_n", "_times")

    def __init__(self, cfg: SimConfig, anchor_ms: float) -> None:
        self._n = cfg.calls
        self._jitter_key = derive_key(cfg.seed, "created-jitter")
        comps = _components(cfg, anchor_ms)
        points = sorted({c.start_ms for c in comps} | {c.end_ms for c in comps})
        # Cumulative expected count at each breakpoint: a piecewise-linear CDF.
        counts = [0.0]
        for lo, hi in itertools.pairwise(points):
            density = sum(
                c.calls / (c.end_ms - c.start_ms)
                for c in comps
                if c.start_ms <= lo and hi <= c.end_ms
            )
            counts.append(counts[-1] + density * (hi - lo))
        self._times = points
        self._counts = counts

    def __len__(self) -> int:
        return self._n

    def created_ms(self, index: int) -> int:
        """Creation time of call *index* in epoch ms."""
        x = index + uniform64(self._jitter_key, index.to_bytes(8, "big"))
        counts = self._counts
        k = bisect.bisect_right(counts, x) - 1
        k = min(max(k, 0), len(counts) - 2)
        c0, c1 = counts[k], counts[k + 1]
        t0, t1 = self._times[k], self._times[k + 1]
        t = t0 + (x - c0) / (c1 - c0) * (t1 - t0) if c1 > c0 else t0
        # Clamp so float rounding at a breakpoint can never step backwards.
        return math.floor(min(max(t, t0), t1))

    def first_at_or_after(self, t_ms: int) -> int:
        """Smallest index whose creation time is >= *t_ms* (``len`` when none)."""
        return bisect.bisect_left(range(self._n), t_ms, key=self.created_ms)

    def first_after(self, t_ms: int) -> int:
        """Smallest index whose creation time is > *t_ms* (``len`` when none)."""
        return bisect.bisect_right(range(self._n), t_ms, key=self.created_ms)
