"""Hive-partitioned datasets: layout, newest-row-wins for every reader, resume, summary."""

from __future__ import annotations

import re
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from auditor import run_audit
from auditor.dataset import latest_rows, latest_sql, read_latest
from auditor.nightly import Nightly
from auditor.partition import call_dates
from auditor.records import (
    SCHEMA,
    SCHEMA_VERSION,
    STATUS_NOT_FOUND,
    STATUS_OK,
    Outcome,
    build_batch,
)
from auditor.simulator import SimConfig, Simulator
from auditor.sink import iter_parts, read_dataset
from auditor.summary import describe_dataset
from tests.conftest import SIM_NOW
from tests.test_discover import job_config
from tests.test_nightly import write_ids
from tests.test_pipeline import config_for


async def test_multi_run_dataset_reads_the_same_in_duckdb_polars_and_pandas(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    async with Simulator(SimConfig(calls=2500, seed=41, now=SIM_NOW)) as sim:
        pop = sim.population
        young = [pop.id_at(i) for i in range(len(pop) - 5, len(pop))]
        ids = write_ids(tmp_path / "ids.csv", [*young, pop.id_at(0), "bogus"])
        cfg = job_config(sim, out, partition_by="date")
        for _ in range(3):  # three runs, an hour apart: calls that changed get newer rows
            summary = await Nightly(cfg, str(ids), 120.0, as_of=sim.now()).run()
            assert summary.exit_code == 0, summary.error
            sim.advance(3600)

    rows = read_dataset(out)
    assert rows.num_rows > len(set(rows.column("call_id").to_pylist()))  # re-audited calls
    latest = read_latest(out)
    assert sorted(Counter(latest.column("call_id").to_pylist()).values())[-1] == 1

    # layout: Hive folders named by the UTC date of start_time (fallbacks for null)
    parts = list(iter_parts(out))
    assert parts and all(re.fullmatch(r"call_date=\d{4}-\d{2}-\d{2}", p.parent.name)
                         for p in parts)
    for part in parts:
        table = pq.read_table(part)
        assert table.schema.equals(SCHEMA, check_metadata=False)
        meta = pq.read_schema(part).metadata
        assert meta[b"auditor.schema_version"] == SCHEMA_VERSION.encode()
        assert set(call_dates(table).to_pylist()) == {part.parent.name.split("=")[1]}

    # the same counts from every reader, using each one's "newest row per call" idiom
    con = duckdb.connect()
    con.execute(latest_sql(out))
    duck_total = con.execute("SELECT count(*), count(DISTINCT call_id) FROM calls").fetchone()
    duck_status = dict(con.execute("SELECT status, count(*) FROM calls GROUP BY 1").fetchall())
    duck_state = dict(con.execute(
        "SELECT coalesce(state, '-'), count(*) FROM calls GROUP BY 1").fetchall())
    duck_dates = dict(con.execute(
        "SELECT strftime(call_date, '%Y-%m-%d'), count(*) FROM calls GROUP BY 1").fetchall())
    duck_rows = con.execute(
        f"SELECT count(*) FROM read_parquet('{out}/**/*.parquet', hive_partitioning = true)"
    ).fetchone()

    frame = pl.scan_parquet(f"{out}/**/*.parquet", hive_partitioning=True).collect()
    newest = (
        frame.sort(["fetched_at", "audit_run"], descending=True)
        .unique(subset="call_id", keep="first", maintain_order=True)
    )
    polars_status = dict(newest.group_by("status").len().iter_rows())
    polars_state = dict(newest.with_columns(pl.col("state").cast(pl.String).fill_null("-"))
                        .group_by("state").len().iter_rows())
    polars_dates = {d.isoformat(): n for d, n in newest.group_by("call_date").len().iter_rows()}

    df = pd.read_parquet(out)  # pyarrow's dataset reader: Hive folders, skips _auditor/
    df = df.sort_values(["fetched_at", "audit_run"], ascending=False).drop_duplicates("call_id")
    pandas_status = df["status"].astype(str).value_counts().to_dict()
    pandas_state = df["state"].astype(object).fillna("-").astype(str).value_counts().to_dict()
    pandas_dates = df["call_date"].astype(str).value_counts().to_dict()

    arrow_status = Counter(latest.column("status").cast(pa.string()).to_pylist())
    assert duck_total == (latest.num_rows, latest.num_rows)
    assert duck_rows == (rows.num_rows,) and len(frame) == rows.num_rows
    assert duck_status == polars_status == pandas_status == dict(arrow_status)
    assert duck_state == polars_state == pandas_state
    assert duck_dates == polars_dates == pandas_dates
    assert sum(duck_dates.values()) == latest.num_rows and len(duck_dates) >= 8
    assert {"ok", "not_found", "invalid_id"} <= set(duck_status)
    # `auditor summary` counts calls by their newest row too, and says how much is history
    described = describe_dataset(out)
    assert f"{latest.num_rows} calls ({rows.num_rows} rows with history)" in described
    ok_line = next(line for line in described.splitlines() if "status:" in line)
    assert f"ok={duck_status['ok']}" in ok_line


async def test_run_resume_and_summary_on_a_partitioned_dataset(tmp_path: Path) -> None:
    out = tmp_path / "out"
    flaky = SimConfig(calls=300, seed=8, now=SIM_NOW, error_rate=0.4)
    async with Simulator(flaky) as sim:
        ids = list(sim.population.ids())
        source = write_ids(tmp_path / "ids.csv", ids)
        first = await run_audit(config_for(sim, [source], out, max_attempts=1,
                                           partition_by="date"))
        assert first.exit_code == 1 and first.status_counts["failed"] > 0
    assert all(p.parent != out for p in iter_parts(out))  # every part is in a date folder
    async with Simulator(SimConfig(calls=300, seed=8, now=SIM_NOW)) as sim:
        second = await run_audit(config_for(sim, [source], out, partition_by="date"))
        assert second.exit_code == 0
        assert len(sim.stats.served_by_id) == first.status_counts["failed"]  # resumed
        assert second.superseded_failures_removed == first.status_counts["failed"]
        table = read_dataset(out)
        assert sorted(table.column("call_id").to_pylist()) == sorted(ids)  # each once
        sim.reset_stats()
        third = await run_audit(config_for(sim, [source], out, partition_by="date"))
        assert third.rows_written == 0 and sim.stats.total_requests == 0
    text = describe_dataset(out)
    assert f"{len(ids)} rows" in text and "failed" not in text.split("runs:")[0]


def test_partition_date_falls_back_when_start_time_is_null() -> None:
    fetched = datetime(2026, 6, 3, 23, 59, tzinfo=UTC).timestamp()
    batch = build_batch([
        Outcome("c-started", STATUS_OK, 200, 1, fetched, None,
                {"startTime": "2026-06-01T23:59:59.999Z", "enqueuedTime": "2026-05-31T10:00:00Z"}),
        Outcome("c-queued", STATUS_OK, 200, 1, fetched, None,
                {"state": "queued", "enqueuedTime": "2026-06-02T00:00:00.000Z"}),
        Outcome("c-missing", STATUS_NOT_FOUND, 404, 1, fetched),
    ])
    assert call_dates(batch).to_pylist() == ["2026-06-01", "2026-06-02", "2026-06-03"]


def test_newest_row_wins_by_fetched_at_then_run() -> None:
    now = time.time()
    older = build_batch([Outcome("c-a", STATUS_OK, 200, 1, now - 60, None, {"state": "answered"}),
                         Outcome("c-b", STATUS_OK, 200, 1, now, None, {"state": "answered"})],
                        "20260609T000000Z-aaaaaa")
    newer = build_batch([Outcome("c-a", STATUS_OK, 200, 1, now, None, {"state": "disconnected"}),
                         Outcome("c-b", STATUS_OK, 200, 1, now, None, {"state": "disconnected"})],
                        "20260609T000000Z-bbbbbb")
    table = pa.Table.from_batches([newer, older])
    latest = latest_rows(table).sort_by("call_id")
    assert latest.column("state").cast(pa.string()).to_pylist() == ["disconnected"] * 2
