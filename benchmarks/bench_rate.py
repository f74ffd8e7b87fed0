"""Target 1, rate precision: hold R exactly against a strict sliding-window limit.

The simulator admits R = 500 requests in any sliding second and answers 429 beyond; the
auditor runs with ``--rate 500`` (in this process, default settings otherwise) on enough
ids to last ~30 s (~8 s with ``--quick``).  Figures:

- the rate the server admitted over the steady part of the run, against R (>= 0.98);
  the whole-run average (start-up and tail included) is reported beside it;
- 429s (target: none), and the most requests the server saw in any sliding second;
- the same peak for a plain ``AsyncLimiter(R, 1)`` driving the same requests, the
  burst the auditor's limiter is designed to avoid (its 429s are the proof).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter

from auditor import runtime
from benchmarks.common import Sim, figure, observed_run, simulator
from benchmarks.rawclient import token

RATE = 500.0


def run(quick: bool) -> dict[str, Any]:
    return runtime.run(_run(quick))  # as `auditor run` runs: see auditor.runtime


async def _run(quick: bool) -> dict[str, Any]:
    seconds = 8.0 if quick else 30.0
    count = int(RATE * seconds * 0.985)
    async with simulator(count, rate=RATE) as sim:
        run = await observed_run(sim, "rate", RATE)
        await asyncio.sleep(1.1)  # let the server's window empty
        await sim.reset()
        plain = await _plain_limiter(sim, run.ids[: int(RATE * 3)])
    summary, stats = run.summary, run.stats
    steady = run.poller.steady_rate()
    result: dict[str, Any] = {
        "what": f"admitted req/s over the steady part of a {seconds:g} s run; "
                "baseline: the simulator's limit R",
        "rate": figure(round(steady, 1) if steady else None, RATE, 0.98, unit="req/s"),
        "whole_run_rate": figure(summary.achieved_rate, RATE, 0.98, unit="req/s"),
        "throttled_429": {"value": stats["throttled"], "target": "0",
                          "meets_target": stats["throttled"] == 0},
        "server_peak_window": {"value": stats["max_window_requests"], "limit": RATE},
        "auditor_sent_peak_window": run.sent_peak,
        "plain_asynclimiter": plain,
        "requests": summary.requests, "seconds": summary.elapsed_seconds,
        "workers": summary.max_workers, "correctness": run.check,
    }
    result["ok"] = run.check["ok"] and summary.exit_code == 0
    return result


async def _plain_limiter(sim: Sim, ids: list[str]) -> dict[str, Any]:
    """The same GETs through ``AsyncLimiter(R, 1)``: it admits R at once, then R more over
    the first second, so some sliding second holds close to 2R."""
    limiter = AsyncLimiter(RATE, 1)
    sends: list[float] = []
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = {"Authorization": "Bearer " + await token(session, sim)}
        prefix = f"{sim.base_url}/accounts/{sim.account_id}/calls/"
        work = iter(ids)

        async def worker() -> None:
            for call_id in work:
                await limiter.acquire()
                sends.append(time.monotonic())
                async with session.get(prefix + call_id, headers=headers) as resp:
                    await resp.read()

        await asyncio.gather(*(worker() for _ in range(64)))
    stats = await sim.stats()
    return {"sent_peak_window": _peak(sends), "throttled_429": stats["throttled"],
            "requests": len(ids)}


def _peak(times: list[float]) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best
