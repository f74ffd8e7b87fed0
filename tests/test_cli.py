"""The command line as a user runs it: real processes, real exit codes, real stderr."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.simulator import SimConfig, Simulator
from auditor.sink import read_dataset
from tests.conftest import SIM_NOW
from tests.test_pipeline import write_ids


def sim_env(sim: Simulator, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BW_")}
    env.update(
        BW_ACCOUNT_ID=sim.config.account_id,
        BW_CLIENT_ID=sim.config.client_id,
        BW_CLIENT_SECRET=sim.config.client_secret,
    )
    env.update(extra)
    return env


async def auditor(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m auditor`` without blocking the loop that serves the simulator."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "auditor",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def sim_args(sim: Simulator) -> list[str]:
    return ["--base-url", sim.base_url, "--token-url", sim.token_url, "--no-progress"]


async def start_run(
    sim: Simulator, source: Path, out: Path, *extra: str
) -> asyncio.subprocess.Process:
    """``auditor run`` in the background, printing a progress line every 50 ms."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "auditor", "run", str(source), "--output", str(out),
        "--base-url", sim.base_url, "--token-url", sim.token_url, "--log-interval", "0.05",
        *extra, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=sim_env(sim),
    )  # fmt: skip


async def until_progress(proc: asyncio.subprocess.Process, settled: int) -> bytes:
    """Follow the run's progress lines until it has settled *settled* ids; returns them."""
    assert proc.stderr is not None
    seen = b""
    while line := await proc.stderr.readline():
        seen += line
        match = re.match(rb"auditor: (\d+)", line)
        if match and int(match.group(1)) >= settled:
            break
    return seen


async def test_run_writes_the_dataset_and_a_summary(tmp_path: Path) -> None:
    async with Simulator(SimConfig(calls=120, seed=2), host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", [*sim.population.ids(), "bogus"])
        code, _, err = await auditor(
            "run",
            str(source),
            "--output",
            str(tmp_path / "out"),
            "--rate",
            "500",
            *sim_args(sim),
            env=sim_env(sim),
        )
        assert code == 0, err
        assert read_dataset(tmp_path / "out").num_rows == 121
        assert "121 rows written" in err and "invalid_id" in err
        assert f"output: {tmp_path / 'out'}" in err
        assert sim.config.client_secret not in err

        code, out, _ = await auditor("summary", str(tmp_path / "out"))
        assert code == 0 and "121 rows" in out and "invalid_id=1" in out


async def test_run_can_write_date_partitions(tmp_path: Path) -> None:
    # A frozen clock: on the wall clock, how many dates 200 calls over 8 days touch
    # depended on the time of day the test ran.
    config = SimConfig(calls=200, seed=2, now=SIM_NOW)
    async with Simulator(config, host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        code, _, err = await auditor(
            "run", str(source), "--output", str(tmp_path / "out"), "--partition-by", "date",
            "--rate", "1000", *sim_args(sim), env=sim_env(sim),
        )  # fmt: skip
        assert code == 0, err
        folders = {p.parent.name for p in (tmp_path / "out").rglob("*.parquet")}
        assert len(folders) >= 8 and all(f.startswith("call_date=20") for f in folders)
        assert read_dataset(tmp_path / "out").num_rows == 200


@pytest.mark.parametrize(
    ("args", "env_extra", "message"),
    [
        (["missing.csv"], {}, "missing.csv"),
        (["ids.csv", "--base-url", "http://api.example.com/api/v2"], {}, "loopback"),
        (["ids.csv", "--rate", "0"], {}, "--rate"),
        (["ids.csv", "--concurrency", "lots"], {}, "--concurrency"),
        (["ids.csv"], {"BW_CLIENT_SECRET": "", "BW_PASSWORD": ""}, "BW_CLIENT_ID"),
        (["ids.csv"], {"BW_ACCOUNT_ID": ""}, "BW_ACCOUNT_ID"),
    ],
)
async def test_bad_usage_is_one_line_and_exit_2_before_any_request(
    tmp_path: Path, args: list[str], env_extra: dict[str, str], message: str
) -> None:
    async with Simulator(SimConfig(calls=10, seed=2), host="127.0.0.1", port=0) as sim:
        write_ids(tmp_path / "ids.csv", sim.population.ids())
        argv = [a if a != "ids.csv" and a != "missing.csv" else str(tmp_path / a) for a in args]
        code, _, err = await auditor(
            "run",
            "--output",
            str(tmp_path / "out"),
            *sim_args(sim),
            *argv,
            env=sim_env(sim, **env_extra),
        )
        assert code == 2
        assert err.count("\n") == 1 and err.startswith("auditor: error:"), err
        assert message in err
        assert "Traceback" not in err
        assert sim.stats.total_requests == 0 and sim.stats.tokens_issued == 0


async def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    async with Simulator(SimConfig(calls=10, seed=2), host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        (tmp_path / "out").write_text("not a directory")
        code, _, err = await auditor(
            "run",
            str(source),
            "--output",
            str(tmp_path / "out"),
            *sim_args(sim),
            env=sim_env(sim),
        )
        assert code == 2 and "not a directory" in err
        assert sim.stats.total_requests == 0


async def test_wrong_credentials_exit_3_naming_the_variables(tmp_path: Path) -> None:
    async with Simulator(SimConfig(calls=50, seed=2), host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        code, _, err = await auditor(
            "run",
            str(source),
            "--output",
            str(tmp_path / "out"),
            *sim_args(sim),
            env=sim_env(sim, BW_CLIENT_SECRET="definitely-wrong-secret"),
        )
        assert code == 3
        assert "BW_CLIENT_ID and BW_CLIENT_SECRET" in err
        assert "definitely-wrong-secret" not in err and "Traceback" not in err


async def test_sigterm_flushes_what_was_fetched_and_exits_143(tmp_path: Path) -> None:
    async with Simulator(SimConfig(calls=3000, seed=2), host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        proc = await start_run(sim, source, tmp_path / "out", "--rate", "200")
        seen = await until_progress(proc, 100)
        proc.send_signal(signal.SIGTERM)
        _, rest = await proc.communicate()
        err = seen + rest
        assert proc.returncode == 143, err.decode()
        assert "stopped early: SIGTERM" in err.decode()
        table = read_dataset(tmp_path / "out")
        ok_requests = sim.stats.requests_by_status.get(200, 0)
        assert table.num_rows >= ok_requests - 64  # at most the in-flight ones abandoned
        assert table.num_rows < 3000
        assert not list((tmp_path / "out").glob(".*tmp"))


def test_demo_runs_and_verifies_itself(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "auditor",
            "demo",
            "--output",
            str(tmp_path / "demo"),
            "--calls",
            "800",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "0 differ, 0 duplicate ids" in result.stderr
    assert "server saw 0 429s" in result.stderr
    assert read_dataset(tmp_path / "demo").num_rows == 800 + 4  # the blank one is skipped


async def test_output_with_another_schema_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(
        pa.table({"call_id": ["c-1"], "mood": ["sunny"]}), out / "part-old-00000.parquet"
    )
    async with Simulator(SimConfig(calls=10, seed=2), host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        code, _, err = await auditor(
            "run", str(source), "--output", str(out), *sim_args(sim), env=sim_env(sim)
        )
        assert code == 2 and "different schema" in err and err.count("\n") == 1
        assert sim.stats.total_requests == 0


async def test_unwritable_output_is_refused_before_any_request(tmp_path: Path) -> None:
    async with Simulator(SimConfig(calls=10, seed=2), host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        # /proc refuses new directories even to root
        code, _, err = await auditor(
            "run",
            str(source),
            "--output",
            "/proc/auditor-out",
            *sim_args(sim),
            env=sim_env(sim),
        )
        assert code == 2 and "not writable" in err and err.count("\n") == 1
        assert sim.stats.total_requests == 0


async def test_sigint_stops_gracefully_with_exit_130(tmp_path: Path) -> None:
    async with Simulator(SimConfig(calls=2000, seed=2), host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        proc = await start_run(sim, source, tmp_path / "out", "--rate", "300")
        await until_progress(proc, 50)
        proc.send_signal(signal.SIGINT)
        _, err = await proc.communicate()
        assert proc.returncode == 130, err.decode()
        assert "stopped early: SIGINT" in err.decode() and b"Traceback" not in err
        written = read_dataset(tmp_path / "out").num_rows
        assert 50 <= written < 2000

        # and the rerun picks up exactly where it stopped
        code, _, err2 = await auditor(
            "run",
            str(source),
            "--output",
            str(tmp_path / "out"),
            *sim_args(sim),
            "--rate",
            "1000",
            env=sim_env(sim),
        )
        assert code == 0, err2
        assert read_dataset(tmp_path / "out").num_rows == 2000
