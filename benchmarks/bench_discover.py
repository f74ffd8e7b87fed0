"""Issue 6: what a List Calls sweep costs, in requests per audited call.

One busy day (more than 25,000 calls, two bursts of more than 10,000 calls within a minute)
is swept with ``auditor discover``'s job against the simulator.  The baseline is the
minimum any client could need, ``ceil(calls / 10,000)`` List Calls queries; the per-call
alternative (``auditor run`` on known ids) costs one request per call.

Correctness: every call that started in the window is written exactly once, nothing
outside it, and every row equals the simulator's truth.  Request counts are deterministic,
so this benchmark is about the algorithm, not the machine.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from auditor.config import AuditConfig, OAuth2Credentials, Secret
from auditor.discover import Discover
from auditor.listing import DAY_MS, LIST_CAP, ListFilters, Window
from auditor.simulator import Burst, SimConfig, Simulator
from auditor.sink import read_dataset
from auditor.verify import verify_dataset

NOW = 1_781_000_000.0


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(_run(quick))


async def _run(quick: bool) -> dict[str, Any]:
    scale = 1 if quick else 3
    config = SimConfig(
        calls=40_000 * scale,
        seed=7,
        now=NOW,
        span_days=2.0,
        bursts=(
            Burst(seconds_ago=60_000, calls=11_000 * scale, duration=50),
            Burst(seconds_ago=20_000, calls=10_500 * scale, duration=40),
        ),
    )
    async with Simulator(config) as sim:
        now_ms = sim.clock.now_ms()
        window = Window(now_ms - DAY_MS, now_ms)
        with tempfile.TemporaryDirectory(prefix="bench-discover-") as scratch:
            out = Path(scratch) / "out"
            job = AuditConfig(
                inputs=[], output=str(out), account_id=config.account_id,
                credentials=OAuth2Credentials(config.client_id, Secret(config.client_secret)),
                base_url=sim.base_url, token_url=sim.token_url, rate=None, progress=False,
            )  # fmt: skip
            summary = await Discover(job, window, ListFilters()).run()
            truth = {
                sim.population.id_at(i)
                for i in range(len(sim.population))
                if window.start_ms <= sim.population.facts(i).start_ms <= window.end_ms
                and sim.population.visible(sim.population.id_at(i), sim.now())
            }
            written = Counter(read_dataset(out, ["call_id"]).column("call_id").to_pylist())
            check = verify_dataset(out, sim.population)
        requests = sim.stats.total_requests
    minimum = math.ceil(len(truth) / LIST_CAP)
    correct = (
        summary.exit_code == 0
        and set(written) == truth
        and max(written.values(), default=1) == 1
        and check.clean
    )
    return {
        "what": f"List Calls sweep of one day holding {len(truth):,} calls with two bursts "
        "of over 10,000 calls in a minute; baseline: ceil(calls / 10,000) queries",
        "requests": requests,
        "calls": len(truth),
        "requests_per_audited_call": round(requests / max(1, len(truth)), 6),
        "minimum_requests": minimum,
        "ratio_to_minimum": round(requests / minimum, 2),
        "per_call_get_requests_instead": len(truth),
        "correctness": {
            "lost": len(truth - set(written)),
            "outside_window": len(set(written) - truth),
            "duplicates": sum(1 for n in written.values() if n > 1),
            "mismatches": len(check.mismatches),
        },
        "ok": correct,
    }
