"""SIGKILL at random moments, then resume: the dataset ends whole, exact and clean."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from auditor.simulator import Simulator
from auditor.sink import read_dataset
from tests.test_cli import start_run, until_progress
from tests.test_pipeline import frozen_config, write_ids

ROW_GROUP = 200
CONCURRENCY = 8
OUTCOME_QUEUE = 256  # auditor.pipeline._OUTCOME_SLOTS
RUN_FLAGS = ("--rate", "600", "--concurrency", str(CONCURRENCY), "--row-group-rows", str(ROW_GROUP))


async def _kill_after(proc: asyncio.subprocess.Process, done_at_least: int) -> None:
    await until_progress(proc, done_at_least)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()


def _assert_readable_and_tidy(out: Path) -> None:
    for part in out.glob("*.parquet"):
        pq.read_table(part)  # every visible file reads cleanly, whatever moment it died
    assert all(p.name.startswith(".") for p in out.iterdir() if p.name.endswith(".tmp"))


async def test_three_sigkills_then_resume(tmp_path: Path) -> None:
    rng = random.Random(1234)
    async with Simulator(frozen_config(calls=4000, seed=40), host="127.0.0.1", port=0) as sim:
        ids = list(sim.population.ids())
        source = write_ids(tmp_path / "ids.csv", ids)
        out = tmp_path / "out"
        for _ in range(3):
            proc = await start_run(sim, source, out, *RUN_FLAGS)
            await _kill_after(proc, rng.randrange(300, 1200))
            assert proc.returncode == -signal.SIGKILL
            _assert_readable_and_tidy(out)

        final = await start_run(sim, source, out, *RUN_FLAGS)
        _, err = await final.communicate()
        assert final.returncode == 0, err.decode()

        table = read_dataset(out)
        written = Counter(table.column("call_id").to_pylist())
        assert set(written) == set(ids) and max(written.values()) == 1  # each id exactly once
        assert not list(out.glob(".*.tmp"))  # no temp file left behind
        refetched = sum(n - 1 for n in sim.stats.served_by_id.values() if n > 1)
        # a crash loses at most the part being written, the row group gathering behind it,
        # the outcome queue and the requests in flight; those ids are fetched again, no others
        assert refetched <= 3 * (2 * ROW_GROUP + OUTCOME_QUEUE + CONCURRENCY)
        assert set(sim.stats.served_by_id) == set(ids)
