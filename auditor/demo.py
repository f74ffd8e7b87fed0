"""``auditor demo``: the real pipeline against the built-in simulator, offline, in seconds.

It starts the simulator on loopback with a strict rate limit, latency and a few faults,
writes an input CSV of its call ids (with duplicates and malformed ids mixed in, as real
exports have), runs the audit with OAuth2 client credentials, then checks every written
row against the simulator's truth and prints how to query the result.
"""

from __future__ import annotations

import asyncio
import csv
import sys
import tempfile
from pathlib import Path

from auditor.config import AuditConfig, OAuth2Credentials, Secret
from auditor.console import live_progress, print_summary
from auditor.pipeline import Audit
from auditor.simulator import SimConfig, Simulator
from auditor.verify import verify_dataset

_MALFORMED = ("not-a-call-id", "c-../../admin", "c-abc/def", "c-%2Fetc", "  ")


def run_demo(output: Path, calls: int, rate: float, progress: bool) -> int:
    return asyncio.run(_demo(output, calls, rate, progress))


async def _demo(output: Path, calls: int, rate: float, progress: bool) -> int:
    sim_config = SimConfig(
        calls=calls,
        seed=2026,
        rate=rate,
        latency_ms=20.0,
        error_rate=0.01,
        reset_rate=0.002,
        truncate_rate=0.002,
        frozen_clock=True,  # what was served stays comparable with the truth afterwards
    )
    async with Simulator(sim_config, host="127.0.0.1", port=0) as sim:
        print(f"simulator: {calls} calls at {sim.base_url}, limit {rate:g} req/s", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="auditor-demo-") as scratch:
            ids_csv = Path(scratch) / "calls.csv"
            _write_input(ids_csv, list(sim.population.ids()))
            config = AuditConfig(
                inputs=[str(ids_csv)],
                output=str(output),
                account_id=sim_config.account_id,
                credentials=OAuth2Credentials(
                    sim_config.client_id, Secret(sim_config.client_secret)
                ),
                base_url=sim.base_url,
                token_url=sim.token_url,
                rate=rate,
                timeout=5.0,
                fresh=True,
                progress=progress,
            )
            audit = Audit(config)
            async with live_progress(audit.progress, progress):
                summary = await audit.run()
        print_summary(summary)
        check = await asyncio.to_thread(verify_dataset, output, sim.population)
        stats = sim.stats
    print(
        f"verified: {check.ok_rows} ok rows equal the simulator's truth field by field, "
        f"{len(check.mismatches)} differ, {len(check.duplicates)} duplicate ids; "
        f"server saw {stats.throttled} 429s, at most {stats.max_window_requests} requests "
        f"in any 1-second window (limit {rate:g})",
        file=sys.stderr,
    )
    print(
        'try:  duckdb -c "SELECT status, disconnect_cause, count(*) FROM '
        f"'{output}/*.parquet' GROUP BY ALL ORDER BY 3 DESC\"",
        file=sys.stderr,
    )
    if not check.clean:
        return 1
    return summary.exit_code


def _write_input(path: Path, ids: list[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["callId", "note"])
        for i, call_id in enumerate(ids):
            writer.writerow([call_id, "demo"])
            if i % 97 == 0:
                writer.writerow([f"  {call_id} ", "duplicate with spaces"])
        for bad in _MALFORMED:
            writer.writerow([bad, "malformed"])
