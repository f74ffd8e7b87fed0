"""Target 3, raw speed: the whole pipeline against a minimal aiohttp GET loop.

No rate limit, no latency: the physical limit is the CPU of this machine, shared by the
client and the simulator process.  The auditor runs its whole pipeline in this process
(read the CSV, dedupe and validate, fetch, parse, normalise, write zstd Parquet) with
default settings (no ``--rate``, automatic concurrency); the baseline is
:func:`benchmarks.rawclient.get_loop`, a bare ``session.get`` + ``read`` loop at the same
concurrency the auditor chose, against the same simulator, on the same ids, right after.
Each pair is repeated and the medians compared, since other work on a shared machine moves
both.  CPU time per request of this process (all threads) is reported beside throughput.

Two auditor figures, measured in the same repetitions:

- ``throughput``: the default, Get Call State over :mod:`auditor.http1`;
- ``throughput_aiohttp_client``: the same pipeline with ``--http-client aiohttp``, like for
  like with the baseline's HTTP client, to show what the pipeline itself costs.

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

CLIENTS = ("lean", "aiohttp")


def run(quick: bool) -> dict[str, Any]:
    loops = ["asyncio", "uvloop"] if runtime.uvloop_available() else ["asyncio"]
    by_loop = {
        name: runtime.run(_measure(quick), use_uvloop=name == "uvloop") for name in loops
    }
    default = "uvloop" if "uvloop" in by_loop else "asyncio"
    result: dict[str, Any] = {
        "what": "whole-pipeline req/s with default settings (no rate, auto concurrency); "
                "baseline: a minimal aiohttp GET loop at the same concurrency, same ids; "
                f"medians of repeated runs, on {default} (what `auditor run` uses)",
        "throughput": by_loop[default]["lean"]["throughput"],
        "throughput_aiohttp_client": by_loop[default]["aiohttp"]["throughput"],
        "by_loop": by_loop,
    }
    if "uvloop" in by_loop:
        result["uvloop_speedup"] = figure(
            by_loop["uvloop"]["lean"]["throughput"]["value"],
            by_loop["asyncio"]["lean"]["throughput"]["value"], 1.0,
            unit="auditor req/s, uvloop over asyncio")
    result["ok"] = all(entry[client]["correctness"]["ok"]
                       for entry in by_loop.values() for client in CLIENTS)
    return result


async def _measure(quick: bool) -> dict[str, Any]:
    count = 12_000 if quick else 30_000  # within the simulator's body cache: every pass alike
    reps = 3 if quick else 5
    runs: dict[str, list[tuple[float, float, int]]] = {client: [] for client in CLIENTS}
    raws: list[tuple[float, float]] = []
    checks: dict[str, dict[str, Any]] = {}
    async with simulator(count) as sim:
        population = sim.population()
        ids = list(population.ids())
        with scratch("throughput") as tmp:
            write_ids(tmp / "ids.csv", ids)
            await get_loop(sim, ids, 16)  # warm the server's cache and both sides' code
            for _ in range(reps):
                workers = 0
                for client in CLIENTS:
                    cpu, started = time.process_time(), time.perf_counter()
                    summary = await run_auditor(sim, [tmp / "ids.csv"], tmp / client,
                                                rate=None, http_client=client)
                    runs[client].append((count / (time.perf_counter() - started),
                                         (time.process_time() - cpu) / count * 1e6,
                                         summary.max_workers))
                    workers = workers or summary.max_workers
                cpu = time.process_time()
                raw = await get_loop(sim, ids, workers)
                raws.append((raw["per_s"], (time.process_time() - cpu) / count * 1e6))
            for client in CLIENTS:
                checks[client] = check_dataset(tmp / client, population, ids)
    raw_rate = statistics.median(r[0] for r in raws)
    raw_cpu = round(statistics.median(r[1] for r in raws), 1)
    return {
        client: {
            "throughput": figure(round(statistics.median(r[0] for r in runs[client])),
                                 round(raw_rate), 0.9, unit="req/s"),
            "run_ratios": [round(a[0] / r[0], 3) for a, r in zip(runs[client], raws,
                                                                  strict=True)],
            "cpu_us_per_request": {
                "auditor": round(statistics.median(r[1] for r in runs[client]), 1),
                "raw_loop": raw_cpu,
            },
            "concurrency": [r[2] for r in runs[client]],
            "requests_per_pass": count,
            "correctness": checks[client],
        }
        for client in CLIENTS
    }
