"""Target 2, an unknown limit: the server enforces R, the auditor is told 2R.

The simulator admits R = 500 requests in any sliding second; the auditor runs with
``--rate 1000`` and must find the real limit from 429s (obeying Retry-After, cutting its
rate multiplicatively and regrowing it along a CUBIC curve).  Figures:

- the rate the server admitted once the auditor had settled (the second half of the run),
  against R (>= 0.85);
- 429s as a share of all requests (<= 2 %);
- the most requests the auditor sent in any sliding second, against the configured 2R
  (never above it);
- the settled rate the run summary reports, and how many times it cut its rate.
"""

from __future__ import annotations

from typing import Any

from auditor import runtime
from benchmarks.common import StatsPoller, figure, observed_run, simulator

LIMIT = 500.0
CONFIGURED = 2 * LIMIT


def run(quick: bool) -> dict[str, Any]:
    return runtime.run(_run(quick))  # as `auditor run` runs: see auditor.runtime


async def _run(quick: bool) -> dict[str, Any]:
    seconds = 15.0 if quick else 40.0
    count = int(LIMIT * seconds * 0.9)
    async with simulator(count, rate=LIMIT) as sim:
        run = await observed_run(sim, "adaptive", CONFIGURED)
    summary, stats, poller, check = run.summary, run.stats, run.poller, run.check
    half = summary.elapsed_seconds / 2
    settled = poller.rate_between(half, summary.elapsed_seconds - 0.5)
    total = stats["total_requests"]
    share = stats["throttled"] / total if total else None
    sent_peak = run.sent_peak
    result: dict[str, Any] = {
        "what": f"admitted req/s over the second half of a {summary.elapsed_seconds:g} s run "
                f"with --rate {CONFIGURED:g}; baseline: the simulator's real limit R",
        "settled_rate": figure(round(settled, 1) if settled else None, LIMIT, 0.85,
                               unit="req/s"),
        "whole_run_rate": figure(summary.achieved_rate, LIMIT, 0.85, unit="req/s"),
        "throttled_share": {"value": round(share, 4) if share is not None else None,
                            "throttled": stats["throttled"], "requests": total,
                            "target": "<= 0.02",
                            "meets_target": share is not None and share <= 0.02},
        "sent_peak_window": {"value": sent_peak, "configured": CONFIGURED,
                             "meets_target": sent_peak is not None and sent_peak <= CONFIGURED},
        "summary_settled_rate": summary.settled_rate,
        "rate_cuts": summary.rate_cuts,
        "per_second_admitted": _per_second(poller, summary.elapsed_seconds),
        "correctness": check,
    }
    result["ok"] = check["ok"] and summary.exit_code == 0
    return result


def _per_second(poller: StatsPoller, seconds: float) -> list[float]:
    """Admitted requests in each second of the run: the shape of the adaptation."""
    rates = []
    for second in range(int(seconds)):
        rate = poller.rate_between(second, second + 1.0)
        if rate is None:
            break
        rates.append(round(rate))
    return rates
