"""Target 4, latency hiding: R = 1000 req/s through a 200 ms (mean, lognormal) round trip.

Holding R needs about R x 0.2 = 200 requests in flight.  The auditor runs with
``--rate 1000`` and otherwise default settings (``--concurrency auto``): the pool must
size itself from the latency it observes (Little's law), within its cap of 256.  Figures:
the rate the server admitted over the steady part of the run, against R (>= 0.95), the
whole-run average (which includes the ramp-up and the last responses' tail), and the
pool size it chose.
"""

from __future__ import annotations

from typing import Any

from auditor import runtime
from benchmarks.common import figure, observed_run, simulator

RATE = 1000.0
LATENCY_MS = 200.0


def run(quick: bool) -> dict[str, Any]:
    return runtime.run(_run(quick))  # as `auditor run` runs: see auditor.runtime


async def _run(quick: bool) -> dict[str, Any]:
    seconds = 8.0 if quick else 20.0
    count = int(RATE * seconds)
    async with simulator(count, rate=RATE, latency_ms=LATENCY_MS) as sim:
        run = await observed_run(sim, "latency", RATE)
    summary, stats, poller, check = run.summary, run.stats, run.poller, run.check
    steady = poller.steady_rate()
    result: dict[str, Any] = {
        "what": f"admitted req/s over the steady part of a {summary.elapsed_seconds:g} s run "
                f"at --rate {RATE:g} with {LATENCY_MS:g} ms mean latency, default concurrency; "
                "baseline: R",
        "rate": figure(round(steady, 1) if steady else None, RATE, 0.95, unit="req/s"),
        "whole_run_rate": figure(summary.achieved_rate, RATE, 0.95, unit="req/s"),
        "workers": summary.max_workers,
        "server_max_in_flight": stats["max_in_flight"],
        "throttled_429": stats["throttled"],
        "correctness": check,
    }
    result["ok"] = check["ok"] and summary.exit_code == 0
    return result
