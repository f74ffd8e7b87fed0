"""Target 5, memory: a 1,000,000-id input against a 100,000-id one.

The auditor runs as users run it, ``python -m auditor run ids.csv --output DIR ...`` in
its own process (the simulator in another), and its peak resident set size is the run's
own ``VmHWM``, saved in its run summary (see :func:`_measure`).  The baseline is the peak
of the same command on a tenth of the ids: memory must not grow with the input beyond the
compact set of distinct ids (~17 bytes each).  ``--quick`` uses 100,000 against 10,000.

Correctness: every id comes back once with the status the simulator implies, and a
sample of ok rows equals the simulator's truth field by field.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from auditor.sink import read_run_summaries
from benchmarks.common import (
    Sim,
    auditor_command,
    check_dataset,
    figure,
    scratch,
    simulator,
    write_ids,
)

LIMIT_MB = 200.0
RATE = 1_000_000.0  # the command line needs a rate: this one never binds


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(_run(quick))


async def _run(quick: bool) -> dict[str, Any]:
    big = 100_000 if quick else 1_000_000
    small = big // 10
    async with simulator(big) as sim:
        population = sim.population()
        with scratch("memory") as tmp:
            runs = {}
            for count in (small, big):
                # Evenly spread over the population: the same mix of 200s and 404s in both.
                ids = [population.id_at(i) for i in range(0, big, big // count)]
                source = tmp / f"ids-{count}.csv"
                write_ids(source, ids)
                runs[count] = await asyncio.to_thread(_measure, sim, source, tmp / f"out-{count}")
                runs[count]["correctness"] = await asyncio.to_thread(
                    check_dataset, tmp / f"out-{count}", population, ids, sample=2000)
                del ids
    peak_big, peak_small = runs[big]["peak_rss_mb"], runs[small]["peak_rss_mb"]
    result: dict[str, Any] = {
        "what": f"peak RSS of `auditor run` on {big:,} ids; baseline: the same on {small:,}",
        "growth": figure(peak_big, peak_small, 1.2, higher_is_better=False, unit="MB"),
        "peak_rss": {"value": peak_big, "limit_mb": LIMIT_MB,
                     "meets_target": peak_big <= LIMIT_MB},
        "runs": {str(count): entry for count, entry in runs.items()},
    }
    result["ok"] = all(entry["correctness"]["ok"] and entry["exit_code"] == 0
                       for entry in runs.values())
    return result


def _measure(sim: Sim, source: Path, output: Path) -> dict[str, Any]:
    """Run the CLI to the end; its own peak RSS, from the kernel's accounting of it."""
    command, env = auditor_command(sim, [source], output, RATE)
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    rises: list[tuple[float, int]] = []  # when the high-water mark rose, and to what (MB)
    watcher = threading.Thread(target=_watch, args=(proc.pid, started, rises), daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    watcher.join(1.0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    entry: dict[str, Any] = {
        # The run's own VmHWM, from its summary file.  Not wait4's ru_maxrss: Linux folds
        # the forking parent's resident size (this benchmark's, which grows with the input
        # it wrote) into the child's, which made the auditor look 150 MB bigger at 1M ids.
        "peak_rss_mb": _own_peak(output),
        "ru_maxrss_mb_includes_parent": round(usage.ru_maxrss / 1024, 1),
        "exit_code": proc.returncode, "seconds": round(elapsed, 1),
        "high_water_rises": [[round(t, 1), mb] for t, mb in rises[-6:]],
    }
    if proc.returncode != 0:
        entry["stderr"] = stderr[-500:]
    return entry


def _own_peak(output: Path) -> float | None:
    runs = read_run_summaries(output)
    return runs[-1].get("peak_memory_mb") if runs else None


def _watch(pid: int, started: float, rises: list[tuple[float, int]]) -> None:
    """Note each time the process's peak RSS (VmHWM) grows by 5 MB or more: where the peak
    is reached says what causes it.  Stops when the process is gone."""
    last = 0
    while True:
        try:
            with open(f"/proc/{pid}/status") as status:
                line = next(line for line in status if line.startswith("VmHWM"))
        except (OSError, StopIteration):
            return
        mb = int(line.split()[1]) // 1024
        if mb >= last + 5:
            rises.append((time.perf_counter() - started, mb))
            last = mb
        time.sleep(0.05)
