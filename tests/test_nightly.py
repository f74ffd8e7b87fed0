"""``auditor nightly``: incremental runs, the GET plan, the state file, and SIGKILL."""

from __future__ import annotations

import asyncio
import csv
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from auditor.config import OAuth2Credentials, Secret
from auditor.dataset import read_latest, scan_known
from auditor.discover import output_lock
from auditor.listing import DAY_MS, Window, format_ms
from auditor.nightly import DEFAULT_SETTLE_SECONDS, FIRST_LOOKBACK_MS, Nightly, NightlyState
from auditor.pipeline import Audit
from auditor.records import STATUS_OK, Outcome, build_batch
from auditor.simulator import Population, SimConfig, Simulator
from auditor.sink import OutputError, iter_parts, read_dataset
from auditor.verify import DATA_COLUMNS
from tests.conftest import SIM_NOW
from tests.test_cli import auditor, sim_env
from tests.test_discover import job_config, started_in

SETTLE_MS = int(DEFAULT_SETTLE_SECONDS * 1000)


def write_ids(path: Path, ids: list[str]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["callId"])
        writer.writerows([i] for i in ids)
    return path


def assert_latest_is_the_truth(out: Path, pop: Population, now_ms: int) -> pa.Table:
    """The newest row of every call equals what the service holds now, and every call
    that started (and is visible) is there exactly once."""
    latest = read_latest(out)
    ids = latest.column("call_id").to_pylist()
    assert len(ids) == len(set(ids))
    window = Window(now_ms - FIRST_LOOKBACK_MS, now_ms)
    truth = started_in(pop, now_ms, window)
    assert set(truth) <= set(ids)
    ok = latest.filter(pa.compute.equal(latest.column("status").cast(pa.string()), STATUS_OK))
    # calls that expired since they were recorded keep their last known state
    got = [r for r in ok.select(list(DATA_COLUMNS)).to_pylist() if pop.visible(r["call_id"])]
    assert len(got) >= len(truth)
    want = build_batch(
        [Outcome(r["call_id"], STATUS_OK, 200, 1, 0.0, None, pop.body(r["call_id"]))
         for r in got]
    ).select(list(DATA_COLUMNS)).to_pylist()
    assert [_norm(r) for r in got] == [_norm(r) for r in want]
    return latest


def _norm(row: dict[str, Any]) -> dict[str, Any]:
    return {k: sorted(v) if isinstance(v, list) else v for k, v in row.items()}


def statuses(table: pa.Table) -> dict[str, str]:
    return dict(zip(table.column("call_id").to_pylist(),
                    table.column("status").cast(pa.string()).to_pylist(), strict=True))


async def test_incremental_runs_fetch_only_what_is_open(tmp_path: Path) -> None:
    config = SimConfig(calls=3000, seed=21, now=SIM_NOW)
    async with Simulator(config) as sim:
        pop = sim.population
        out = tmp_path / "out"
        young = [pop.id_at(i) for i in range(len(pop) - 4, len(pop))]  # not visible yet
        expired = [pop.id_at(i) for i in range(3)]  # past the 7-day retention
        unknown = "c-00000000-0000-unknown"
        listed = [pop.id_at(1500), pop.id_at(1501)]
        ids = write_ids(tmp_path / "ids.csv", [*young, *expired, unknown, "bogus", *listed])
        assert not any(pop.visible(i) for i in [*young, *expired])
        cfg = job_config(sim, out, partition_by="date")
        settle = 120.0  # short, so that some calls still open started before the watermark

        # 1. the first run lists the whole 7-day window and GETs only the ids it did not list
        first = await Nightly(cfg, str(ids), settle, as_of=sim.now()).run()
        assert first.exit_code == 0, first.error
        now1 = sim.clock.now_ms()
        assert first.details["window"] == str(Window(now1 - FIRST_LOOKBACK_MS, now1))
        assert set(sim.stats.served_by_id) == {*young, *expired, unknown}
        assert sim.stats.list_requests == first.details["list_requests"] == 1
        state = NightlyState.load(out)
        assert state.watermark_ms == now1 - 120_000 and state.last_success == first.run_id
        latest = assert_latest_is_the_truth(out, pop, now1)
        got = statuses(latest)
        assert {got[i] for i in [*young, *expired, unknown]} == {"not_found"}
        assert got["bogus"] == "invalid_id"
        open_before = {r["call_id"] for r in latest.to_pylist()
                       if r["status"] == "ok" and r["state"] != "disconnected"}
        assert open_before  # calls still queued, ringing or talking when listed

        # 2. straight again: one List Calls request for the overlap, and GETs only for the
        #    few calls still open that started before the watermark (not re-listed)
        sim.reset_stats()
        second = await Nightly(cfg, str(ids), settle, as_of=sim.now()).run()
        assert second.exit_code == 0
        assert sim.stats.list_requests == 1
        assert set(sim.stats.served_by_id) <= open_before
        assert sim.stats.total_requests == second.requests <= 1 + len(open_before) <= 12

        # 3. an hour later: the young calls are listed, open calls that started before the
        #    watermark are fetched, not_found ids get their one second look
        sim.advance(3600)
        known = scan_known(out, sim.clock.now_ms(), 120_000, NightlyState.load(out).runs)
        sim.reset_stats()
        third = await Nightly(cfg, str(ids), settle, as_of=sim.now()).run()
        assert third.exit_code == 0, third.error
        fetched = set(sim.stats.served_by_id)
        rows = read_dataset(out).to_pylist()
        relisted = {r["call_id"] for r in rows
                    if r["audit_run"] == third.run_id and r["source"] == "list"}
        assert fetched == (set(known.pending) | set(known.recheck)) - relisted
        assert {*expired, unknown} <= fetched and not set(young) & fetched
        assert fetched & open_before  # calls open before the watermark: fetched one by one
        assert not any(call_id in known.final for call_id in fetched)  # no final call again
        assert max(sim.stats.served_by_id.values()) == 1
        latest = assert_latest_is_the_truth(out, pop, sim.clock.now_ms())
        got = statuses(latest)
        assert {got[i] for i in young} == {"ok"}
        assert {r["state"] for r in latest.to_pylist() if r["call_id"] in open_before} == {
            "disconnected"
        }

        # 4. and again: the not_found ids were confirmed gone, so nothing is fetched
        sim.advance(3600)
        sim.reset_stats()
        fourth = await Nightly(cfg, str(ids), settle, as_of=sim.now()).run()
        assert fourth.exit_code == 0
        assert not sim.stats.served_by_id and sim.stats.list_requests == 1
        assert fourth.details["get_plan"] == {"ids_settled": 11}  # every id in the file


@pytest.mark.parametrize("kill_when", ["listing", "fetching"])
async def test_sigkill_mid_run_then_the_next_run_completes(tmp_path: Path, kill_when: str) -> None:
    config = SimConfig(calls=4000, seed=31, now=SIM_NOW, latency_ms=2)
    async with Simulator(config) as sim:
        pop = sim.population
        out = tmp_path / "out"
        # ids the listing cannot return (expired), so the GET phase takes a few seconds
        expired = [pop.id_at(i) for i in range(400) if not pop.visible(pop.id_at(i))]
        ids = write_ids(tmp_path / "ids.csv", expired)
        args = ["nightly", "--output", str(out), "--ids", str(ids),
                "--as-of", format_ms(sim.clock.now_ms()), "--base-url", sim.base_url,
                "--token-url", sim.token_url, "--no-progress", "--row-group-rows", "25"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "auditor", *args, "--rate", "150",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=sim_env(sim),
        )

        def reached() -> bool:
            if kill_when == "listing":
                return sim.stats.list_requests >= 1
            return len(sim.stats.served_by_id) >= 60

        for _ in range(3000):
            if reached() or proc.returncode is not None:
                break
            await asyncio.sleep(0.01)  # waiting for the condition on the server, not a delay
        proc.send_signal(signal.SIGKILL)
        _, err = await proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode()
        state = NightlyState.load(out)
        if kill_when == "fetching":
            assert state.watermark_ms is not None  # listing had finished and was recorded
            assert any(iter_parts(out))
        assert state.last_success is None

        before = read_dataset(out)
        final_before = {r["call_id"] for r in before.to_pylist()
                        if r["status"] == "ok" and r["state"] == "disconnected"}
        sim.reset_stats()
        code, _, err2 = await auditor(*args, "--rate", "2000", env=sim_env(sim))
        assert code == 0, err2
        assert not set(sim.stats.served_by_id) & final_before  # no final call fetched again
        assert not list(out.rglob(".*.tmp"))  # no half-written part left behind
        now_ms = sim.clock.now_ms()
        latest = assert_latest_is_the_truth(out, pop, now_ms)
        got = statuses(latest)
        assert all(got[i] == "not_found" for i in expired)
        state = NightlyState.load(out)
        assert state.watermark_ms == now_ms - SETTLE_MS and state.last_success is not None
        # every call once in the newest view, however many times the killed run wrote it
        assert Counter(latest.column("call_id").to_pylist()).most_common(1)[0][1] == 1


async def test_state_lock_and_layout_errors(tmp_path: Path) -> None:
    async with Simulator(SimConfig(calls=200, seed=3, now=SIM_NOW)) as sim:
        out = tmp_path / "out"
        cfg = job_config(sim, out)
        assert (await Nightly(cfg, as_of=sim.now()).run()).exit_code == 0
        # another run holds the dataset
        with output_lock(out), pytest.raises(OutputError, match="another"):
            await Nightly(cfg, as_of=sim.now()).run()
        # the layout is kept
        with pytest.raises(OutputError, match="partition"):
            await Nightly(job_config(sim, out, partition_by="date"), as_of=sim.now()).run()
        # refused credentials: exit 3, nothing lost
        rows = read_dataset(out).num_rows
        wrong = job_config(sim, out, credentials=OAuth2Credentials(
            sim.config.client_id, Secret("wrong")))
        refused = await Nightly(wrong, as_of=sim.now()).run()
        assert refused.exit_code == 3 and "BW_CLIENT_SECRET" in str(refused.error)
        assert read_dataset(out).num_rows == rows
        # a damaged state file: one line, exit 2
        NightlyState.path(out).write_bytes(b"{not json")
        args = ["nightly", "--output", str(out), "--partition-by", "none", "--base-url",
                sim.base_url, "--token-url", sim.token_url, "--no-progress"]
        code, _, err = await auditor(*args, env=sim_env(sim))
        assert code == 2 and "nightly state" in err and len(err.strip().splitlines()) == 1
        # --fresh starts over: the whole window again
        code, _, err = await auditor(*args, "--fresh", "--as-of", format_ms(sim.clock.now_ms()),
                                     env=sim_env(sim))
        assert code == 0, err
        data = orjson.loads(NightlyState.path(out).read_bytes())
        assert data["watermark_ms"] == sim.clock.now_ms() - SETTLE_MS
        assert read_latest(out).num_rows == len(
            started_in(sim.population, sim.clock.now_ms(),
                       Window(sim.clock.now_ms() - 8 * DAY_MS, sim.clock.now_ms())))


async def test_audit_takes_an_id_stream(tmp_path: Path) -> None:
    """The pipeline's id-stream input: any iterable, deduplicated and validated like files,
    consumed lazily, and not filtered by what the output already holds."""
    async with Simulator(SimConfig(calls=300, seed=4, now=SIM_NOW)) as sim:
        ids = list(sim.population.ids())[100:160]
        consumed: list[str] = []

        def stream() -> Iterator[str]:
            for call_id in [*ids, *ids[:10], f"  {ids[0]} ", "", "c-../x"]:
                consumed.append(call_id)
                yield call_id

        out = tmp_path / "out"
        cfg = job_config(sim, out, partition_by="date")
        summary = await Audit(cfg, ids=stream()).run()
        assert summary.exit_code == 0 and len(consumed) == 73
        assert summary.status_counts == {"ok": 60, "invalid_id": 1}
        assert Counter(sim.stats.served_by_id.values()) == {1: 60}
        again = await Audit(cfg, ids=ids[:5]).run()  # chosen ids are fetched, even if done
        assert again.requests == 5 and read_dataset(out).num_rows == 66
