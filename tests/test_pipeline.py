"""The main job end to end: real HTTP to the simulator on loopback, real Parquet read back."""

from __future__ import annotations

import asyncio
import csv
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from auditor import AuditConfig, BasicCredentials, OAuth2Credentials, Secret, run_audit
from auditor.connection import connect
from auditor.pipeline import Audit, Progress, RunContext
from auditor.records import BUILD_CHUNK_ROWS, SCHEMA
from auditor.simulator import SimConfig, Simulator
from auditor.sink import PartWriter, new_run_id, prepare_output, read_dataset
from auditor.verify import verify_dataset
from tests.conftest import SIM_NOW

MALFORMED = [
    "not-a-call-id",
    "c-../../admin",
    "c-abc/def",
    "c-%2Fetc",
    "c-a?b",
    "c-a#b",
    "c-a b",
    "c-ünïcode",
    "c-" + "a" * 127,
]


def frozen_config(**settings: Any) -> SimConfig:
    """A simulator whose clock moves only by advance(): served bodies equal the truth."""
    return SimConfig(now=SIM_NOW, **settings)


def write_ids(path: Path, ids: Iterable[str], header: str = "callId") -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([header])
        for call_id in ids:
            writer.writerow([call_id])
    return path


def config_for(sim: Simulator, inputs: list[Path], output: Path, **overrides: Any) -> AuditConfig:
    cfg = sim.config
    settings: dict[str, Any] = dict(
        inputs=[str(p) for p in inputs],
        output=str(output),
        account_id=cfg.account_id,
        credentials=OAuth2Credentials(cfg.client_id, Secret(cfg.client_secret)),
        base_url=sim.base_url,
        token_url=sim.token_url,
        rate=None,
        concurrency=16,
        timeout=5.0,
        progress=False,
    )
    settings.update(overrides)
    return AuditConfig(**settings)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = frozen_config(calls=600, seed=11, error_rate=0.05, reset_rate=0.01, truncate_rate=0.01)
    async with Simulator(config, host="127.0.0.1", port=0) as server:
        yield server


@pytest.mark.parametrize("http_client", ["lean", "aiohttp"])
async def test_every_id_once_and_ok_rows_equal_the_truth(
    sim: Simulator, tmp_path: Path, http_client: str
) -> None:
    ids = list(sim.population.ids())
    # duplicates (also with stray whitespace) and malformed ids, as real exports have
    rows = ids + ids[:50] + [f"  {i}  " for i in ids[50:60]] + MALFORMED + ["", "   "]
    source = write_ids(tmp_path / "ids.csv", rows)
    config = config_for(sim, [source], tmp_path / "out", http_client=http_client)
    summary = await run_audit(config)

    assert summary.exit_code == 0, summary
    table = read_dataset(tmp_path / "out")
    assert table.schema.equals(SCHEMA, check_metadata=False)
    written = Counter(table.column("call_id").to_pylist())
    assert set(written) == set(ids) | set(MALFORMED)
    assert max(written.values()) == 1

    check = verify_dataset(tmp_path / "out", sim.population)
    assert check.clean, check.mismatches[:5]
    statuses = dict(
        zip(table.column("call_id").to_pylist(), table.column("status").to_pylist(), strict=True)
    )
    now = sim.now()
    for call_id in ids:
        visible = sim.population.visible(call_id, now)
        assert statuses[call_id] == ("ok" if visible else "not_found"), call_id
    assert check.ok_rows > 0.8 * len(ids)
    assert all(statuses[bad] == "invalid_id" for bad in MALFORMED)
    # malformed ids never reached the server, and every valid id was asked for
    assert not set(sim.stats.served_by_id) - set(ids)
    assert set(sim.stats.served_by_id) == set(ids)
    assert summary.retried > 0  # the injected faults were met and overcome
    assert summary.status_counts == dict(Counter(statuses.values()))


async def test_dataset_reads_the_same_in_duckdb(sim: Simulator, tmp_path: Path) -> None:
    source = write_ids(tmp_path / "ids.csv", sim.population.ids())
    out = tmp_path / "out"
    await run_audit(config_for(sim, [source], out, row_group_rows=100))
    parts = sorted(out.glob("*.parquet"))
    assert len(parts) >= 6  # one part per row group of 100
    for part in parts:
        metadata = pq.read_metadata(part)
        assert metadata.num_row_groups == 1
        assert metadata.row_group(0).column(0).compression == "ZSTD"
        assert pq.read_schema(part).metadata[b"auditor.schema_version"] == b"1"
    arrow = read_dataset(out)
    con = duckdb.connect()
    by_status = dict(
        con.execute(f"SELECT status, count(*) FROM '{out}/*.parquet' GROUP BY status").fetchall()
    )
    assert by_status == dict(Counter(arrow.column("status").to_pylist()))
    types = dict(
        con.execute(
            f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{out}/*.parquet')"
        ).fetchall()
    )
    assert types["start_time"] == "TIMESTAMP WITH TIME ZONE"
    assert types["stir_shaken"] == "MAP(VARCHAR, VARCHAR)"
    assert types["http_status"] == "SMALLINT"
    n_ok = con.execute(
        f"SELECT count(*) FROM '{out}/*.parquet' WHERE status = 'ok' AND last_update IS NOT NULL"
    ).fetchone()
    assert n_ok is not None and n_ok[0] == by_status["ok"]


async def test_parts_of_several_chunks_are_one_row_group_each(tmp_path: Path) -> None:
    # 2,500 rows a part: two chunks of normalised rows (2,048 + 452), their dictionaries merged
    assert BUILD_CHUNK_ROWS < 2500 < 2 * BUILD_CHUNK_ROWS
    async with Simulator(frozen_config(calls=6000, seed=21), host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        out = tmp_path / "out"
        summary = await run_audit(config_for(sim, [source], out, row_group_rows=2500))
        assert summary.exit_code == 0 and summary.rows_written == 6000
        sizes = sorted(pq.read_metadata(part).num_rows for part in out.glob("*.parquet"))
        assert sizes == [1000, 2500, 2500]  # a chunk never straddles two parts
        for part in out.glob("*.parquet"):
            assert pq.read_metadata(part).num_row_groups == 1
            assert pq.read_schema(part).equals(SCHEMA, check_metadata=False)
        assert verify_dataset(out, sim.population).clean
        counts = duckdb.connect().execute(
            f"SELECT status, disconnect_cause, count(*) FROM '{out}/*.parquet' GROUP BY ALL"
        ).fetchall()
        table = read_dataset(out)
        expected = Counter(
            zip(
                table.column("status").to_pylist(),
                table.column("disconnect_cause").to_pylist(),
                strict=True,
            )
        )
        assert {(s, c): n for s, c, n in counts} == dict(expected)
        assert summary.status_counts == dict(Counter(table.column("status").to_pylist()))


class HeldWriter(PartWriter):
    """Writes parts as usual, but holds the first one (in the writer's thread) until released."""

    def __init__(self, directory: Path, run_id: str) -> None:
        super().__init__(directory, run_id)
        self.holding = threading.Event()
        self.release = threading.Event()

    def write(self, batch: pa.RecordBatch | pa.Table, subdir: str | None = None) -> Path:
        if not self.parts:
            self.holding.set()
            if not self.release.wait(60):
                raise RuntimeError("never released")
        return super().write(batch, subdir)


async def test_outcomes_keep_flowing_while_a_part_is_written(
    sim: Simulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = config_for(sim, [], out, row_group_rows=100)
    prepare_output(out, fresh=False, scan=False)
    writer = HeldWriter(out, new_run_id())
    progress = Progress()
    ids = list(sim.population.ids())
    async with connect(config) as conn:
        context = RunContext(conn, writer, writer.run_id, progress)
        run = asyncio.create_task(Audit(config, ids, context).run())
        for _ in range(3000):
            if progress.written >= 200 or run.done():
                break
            await asyncio.sleep(0.01)  # waiting for the condition, not a delay
        # The first part is still being written, and a second row group has come in.
        assert writer.holding.is_set() and not writer.parts
        assert progress.written >= 200
        writer.release.set()
        summary = await run
    assert summary.exit_code in (0, 1) and summary.rows_written == len(ids)
    assert [pq.read_metadata(part).num_rows for part in writer.parts] == [100] * 6
    assert sorted(read_dataset(out).column("call_id").to_pylist()) == sorted(ids)


async def test_legacy_basic_auth(tmp_path: Path) -> None:
    async with Simulator(frozen_config(calls=50, seed=3), host="127.0.0.1", port=0) as sim:
        creds = BasicCredentials(sim.config.username, Secret(sim.config.password))
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        summary = await run_audit(config_for(sim, [source], tmp_path / "out", credentials=creds))
        assert summary.exit_code == 0
        assert sim.stats.tokens_issued == 0
        assert verify_dataset(tmp_path / "out", sim.population).clean
        assert summary.rows_written == 50


async def test_refused_credentials_stop_at_once_and_keep_earlier_rows(tmp_path: Path) -> None:
    async with Simulator(frozen_config(calls=200, seed=5), host="127.0.0.1", port=0) as sim:
        ids = list(sim.population.ids())
        first = write_ids(tmp_path / "first.csv", ids[:80])
        out = tmp_path / "out"
        assert (await run_audit(config_for(sim, [first], out))).exit_code == 0
        everything = write_ids(tmp_path / "all.csv", ids)

        sim.reset_stats()
        bad_basic = BasicCredentials(sim.config.username, Secret("wrong"))
        summary = await run_audit(config_for(sim, [everything], out, credentials=bad_basic))
        assert summary.exit_code == 3
        assert "BW_USERNAME" in str(summary.error)
        assert sim.stats.total_requests <= 2  # the canary request, not one per worker
        assert read_dataset(out).num_rows == 80  # nothing fetched before was lost

        sim.reset_stats()
        bad_oauth = OAuth2Credentials(sim.config.client_id, Secret("wrong"))
        summary = await run_audit(config_for(sim, [everything], out, credentials=bad_oauth))
        assert summary.exit_code == 3
        assert "BW_CLIENT_SECRET" in str(summary.error)
        assert sim.stats.total_requests == 0  # refused at the token endpoint

        sim.reset_stats()
        other_account = config_for(sim, [everything], out, account_id="1234567")
        summary = await run_audit(other_account)
        assert summary.exit_code == 3 and "403" in str(summary.error)
        assert read_dataset(out).num_rows == 80


async def test_rerun_resumes_and_retries_only_failed_ids(tmp_path: Path) -> None:
    flaky = frozen_config(calls=300, seed=8, error_rate=0.4)
    out = tmp_path / "out"
    async with Simulator(flaky, host="127.0.0.1", port=0) as sim:
        ids = list(sim.population.ids())
        source = write_ids(tmp_path / "ids.csv", ids)
        first = await run_audit(config_for(sim, [source], out, max_attempts=1))
        assert first.exit_code == 1  # some ids failed
        failed = {
            cid
            for cid, status in zip(
                read_dataset(out).column("call_id").to_pylist(),
                read_dataset(out).column("status").to_pylist(),
                strict=True,
            )
            if status == "failed"
        }
        assert failed
    async with Simulator(frozen_config(calls=300, seed=8), host="127.0.0.1", port=0) as sim:
        second = await run_audit(config_for(sim, [source], out))
        assert second.exit_code == 0
        assert set(sim.stats.served_by_id) == failed  # only the failed ids were asked again
        table = read_dataset(out)
        assert sorted(table.column("call_id").to_pylist()) == sorted(ids)  # each exactly once
        assert "failed" not in table.column("status").to_pylist()
        assert second.superseded_failures_removed == len(failed)

        third = await run_audit(config_for(sim, [source], out, fresh=True))
        assert third.rows_written == len(ids)
        assert read_dataset(out).num_rows == len(ids)


async def test_configured_rate_is_never_exceeded_in_any_second(tmp_path: Path) -> None:
    async with Simulator(
        frozen_config(calls=300, seed=4, rate=100), host="127.0.0.1", port=0
    ) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        summary = await run_audit(
            config_for(sim, [source], tmp_path / "out", rate=100, concurrency=None)
        )
        assert summary.exit_code == 0
        assert sim.stats.throttled == 0
        assert sim.stats.max_window_requests <= 100


async def test_limit_lower_than_configured_is_found_by_429s(tmp_path: Path) -> None:
    config = frozen_config(calls=400, seed=9, rate=80)
    async with Simulator(config, host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        summary = await run_audit(config_for(sim, [source], tmp_path / "out", rate=400))
        assert summary.exit_code == 0
        assert sim.stats.throttled > 0 and summary.throttled == sim.stats.throttled
        assert summary.rate_cuts >= 1 and summary.settled_rate is not None
        assert summary.settled_rate < 400
        assert verify_dataset(tmp_path / "out", sim.population).clean
