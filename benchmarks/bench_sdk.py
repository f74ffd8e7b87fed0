"""Target 6, against what users do today: the official ``bandwidth-sdk`` in 32 threads.

The baseline is the job as a user writes it with Bandwidth's own Python SDK: read the ids
from the CSV, call ``CallsApi.get_call_state`` from a 32-thread pool (the SDK is
synchronous; urllib3's pool is raised to 32 connections so that no thread waits for one),
count a ``NotFoundException`` as not found, and write every state to one Parquet file.
It talks to the same simulator (``Configuration(host=..., ignore_operation_servers=True)``,
OAuth2 client credentials).  The auditor does the same job with default settings and no
``--rate`` (in this process, as :func:`auditor.runtime.run` runs it).

Two settings: no latency, and 50 ms mean latency.  The figure is the auditor's speed over
the SDK's (>= 4x).  Needs the ``bench`` extra (``pip install -e '.[bench]'``); without it
the benchmark reports itself skipped.
"""

from __future__ import annotations

import concurrent.futures
import csv
import importlib.util
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from auditor import runtime
from benchmarks.common import Sim, check_dataset, figure, run_auditor, scratch, simulator, write_ids

THREADS = 32


def run(quick: bool) -> dict[str, Any]:
    if importlib.util.find_spec("bandwidth") is None:
        return {"skipped": "bandwidth-sdk is not installed: pip install -e '.[bench]'"}
    settings = {"no_latency": 0.0, "latency_50ms": 50.0}
    results = {name: runtime.run(_compare(latency, quick)) for name, latency in settings.items()}
    return {
        "what": "auditor req/s over bandwidth-sdk in a 32-thread pool, same job (CSV in, "
                "one Parquet out), same simulator",
        **results,
        "ok": all(entry["ok"] for entry in results.values()),
    }


async def _compare(latency_ms: float, quick: bool) -> dict[str, Any]:
    if latency_ms:
        sdk_ids, auditor_ids = (1_500, 6_000) if quick else (5_000, 20_000)
    else:
        sdk_ids, auditor_ids = (2_500, 10_000) if quick else (8_000, 30_000)
    async with simulator(auditor_ids, latency_ms=latency_ms) as sim:
        population = sim.population()
        ids = list(population.ids())
        with scratch("sdk") as tmp:
            # Evenly spread over the population, so both see the same mix of 200s and 404s.
            step = len(ids) // sdk_ids
            write_ids(tmp / "sdk.csv", ids[::step][:sdk_ids])
            write_ids(tmp / "ids.csv", ids)
            sdk = _sdk_job(sim, tmp / "sdk.csv", tmp / "sdk.parquet")
            started = time.perf_counter()
            summary = await run_auditor(sim, [tmp / "ids.csv"], tmp / "out", rate=None)
            auditor_rate = len(ids) / (time.perf_counter() - started)
            check = check_dataset(tmp / "out", population, ids)
    return {
        "speedup": figure(round(auditor_rate), round(sdk["per_s"]), 4.0, unit="req/s"),
        "latency_ms": latency_ms,
        "sdk": sdk,
        "auditor": {"requests": len(ids), "per_s": round(auditor_rate),
                    "workers": summary.max_workers},
        "correctness": check,
        "ok": check["ok"] and sdk["rows"] == sdk["requests"],
    }


def _sdk_job(sim: Sim, source: Path, output: Path) -> dict[str, Any]:
    """The job as written with the SDK (blocking: it runs on this thread)."""
    import bandwidth
    from bandwidth.api.calls_api import CallsApi
    from bandwidth.exceptions import NotFoundException

    config = bandwidth.Configuration(
        host=sim.base_url, client_id=str(sim.info["client_id"]),
        client_secret=str(sim.info["client_secret"]), access_token_url=sim.token_url,
        ignore_operation_servers=True,
    )
    config.connection_pool_maxsize = THREADS
    api = CallsApi(bandwidth.ApiClient(config))
    started = time.perf_counter()
    with open(source, newline="") as handle:
        ids = [row["callId"] for row in csv.DictReader(handle)]

    def fetch(call_id: str) -> dict[str, Any]:
        try:
            state = api.get_call_state(sim.account_id, call_id)
        except NotFoundException:
            return {"callId": call_id, "status": "not_found"}
        return {**state.model_dump(mode="json", by_alias=True), "status": "ok"}

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        rows = list(pool.map(fetch, ids))
    pq.write_table(pa.Table.from_pylist(rows), output, compression="zstd")
    elapsed = time.perf_counter() - started
    return {"requests": len(ids), "rows": pq.read_metadata(output).num_rows,
            "seconds": round(elapsed, 2), "per_s": round(len(ids) / elapsed, 1)}
