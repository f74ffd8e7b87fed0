"""Target 3, raw speed: the whole pipeline against a minimal aiohttp GET loop.

No rate limit, no latency: the physical limit is the CPU of this machine, shared by the
client and the simulator process.  The auditor runs its whole pipeline in this process
(read the CSV, dedupe and validate, fetch, parse, normalise, write zstd Parquet) with
default settings (no ``--rate``, automatic concurrency); the baseline is
:func:`benchmarks.rawclient.get_loop`, a bare ``session.get`` + ``read`` loop at the same
concurrency the auditor chose, against the same simulator, on the same ids, just before.
Each pair is repeated and the medians compared, since other work on a shared machine moves
both.  CPU time per request of this process (all threads) is reported beside throughput.

Both run once on the stock asyncio loop and once on uvloop (when installed): whether
uvloop helps is one of the figures.  Both loops run under :func:`auditor.runtime.run`,
as ``auditor run`` does.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from auditor import runtime
from benchmarks.common import check_dataset, figure, run_auditor, scratch, simulator, write_ids
from benchmarks.rawclient import get_loop


def run(quick: bool) -> dict[str, Any]:
    loops = ["asyncio", "uvloop"] if runtime.uvloop_available() else ["asyncio"]
    by_loop = {
        name: runtime.run(_measure(quick), use_uvloop=name == "uvloop") for name in loops
    }
    default = "uvloop" if "uvloop" in by_loop else "asyncio"
    result: dict[str, Any] = {
        "what": "whole-pipeline req/s with default settings (no rate, auto concurrency); "
                "baseline: a minimal aiohttp GET loop at the same concurrency, same ids; "
                f"medians of repeated pairs, on {default} (what `auditor run` uses)",
        "throughput": by_loop[default]["throughput"],
        "by_loop": by_loop,
    }
    if "uvloop" in by_loop:
        result["uvloop_speedup"] = figure(
            by_loop["uvloop"]["throughput"]["value"],
            by_loop["asyncio"]["throughput"]["value"], 1.0, unit="auditor req/s, uvloop "
            "over asyncio")
    result["ok"] = all(entry["correctness"]["ok"] for entry in by_loop.values())
    return result


async def _measure(quick: bool) -> dict[str, Any]:
    count = 12_000 if quick else 30_000  # within the simulator's body cache: every pass alike
    reps = 3 if quick else 5
    async with simulator(count) as sim:
        population = sim.population()
        ids = list(population.ids())
        with scratch("throughput") as tmp:
            write_ids(tmp / "ids.csv", ids)
            await get_loop(sim, ids, 16)  # warm the server's cache and both sides' code
            pairs = []
            for _ in range(reps):
                cpu, started = time.process_time(), time.perf_counter()
                summary = await run_auditor(sim, [tmp / "ids.csv"], tmp / "out", rate=None)
                auditor = (count / (time.perf_counter() - started),
                           (time.process_time() - cpu) / count * 1e6, summary.max_workers)
                cpu = time.process_time()
                raw = await get_loop(sim, ids, summary.max_workers)
                pairs.append((auditor, (raw["per_s"], (time.process_time() - cpu) / count * 1e6)))
            check = check_dataset(tmp / "out", population, ids)
    auditor_rate = statistics.median(a[0] for a, _ in pairs)
    raw_rate = statistics.median(r[0] for _, r in pairs)
    return {
        "throughput": figure(round(auditor_rate), round(raw_rate), 0.9, unit="req/s"),
        "pair_ratios": [round(a[0] / r[0], 3) for a, r in pairs],
        "cpu_us_per_request": {
            "auditor": round(statistics.median(a[1] for a, _ in pairs), 1),
            "raw_loop": round(statistics.median(r[1] for _, r in pairs), 1),
        },
        "concurrency": [a[2] for a, _ in pairs],
        "requests_per_pass": count,
        "correctness": check,
    }
