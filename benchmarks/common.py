"""What every performance benchmark shares: a simulator process, inputs, runs, and checks.

The simulator always runs as ``python -m auditor simulate --json --frozen-clock`` in its own
process, so on a small machine the client and the server each get a core.  Its clock is
frozen, so :func:`population` rebuilds, in this process, exactly the truth it serves, and
every benchmark can check its output row by row (``"ok"`` is that check, never a timing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from auditor import sink
from auditor.config import AuditConfig, OAuth2Credentials, Secret
from auditor.pipeline import Audit, RunSummary
from auditor.records import STATUS_NOT_FOUND, STATUS_OK, Outcome, build_batch
from auditor.simulator import Population, SimConfig
from auditor.verify import DATA_COLUMNS

SEED = 11


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return round(value / baseline, 3)


def figure(value: float | None, baseline: float | None, target: float, *,
           higher_is_better: bool = True, unit: str = "") -> dict[str, Any]:
    """One reported figure: value, in-run baseline, their ratio, and whether it meets target."""
    r = ratio(value, baseline)
    met = None if r is None else (r >= target if higher_is_better else r <= target)
    return {"value": value, "baseline": baseline, "ratio": r,
            "target": (">= " if higher_is_better else "<= ") + f"{target:g}",
            "meets_target": met, "unit": unit}


# -- the simulator ----------------------------------------------------------------------------


@dataclass
class Sim:
    """A running simulator process and what it announced."""

    proc: asyncio.subprocess.Process
    info: dict[str, Any]
    calls: int
    rate: float | None
    latency_ms: float

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    @property
    def token_url(self) -> str:
        return str(self.info["token_url"])

    @property
    def account_id(self) -> str:
        return str(self.info["account_id"])

    def population(self) -> Population:
        """The truth the server serves (frozen clock: the same bodies, here)."""
        return Population(SimConfig(calls=self.calls, seed=SEED, account_id=self.account_id,
                                    now=self.info["now"], frozen_clock=True))

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(
                f"{self.info['url']}/_sim/stats?ids=0") as resp:
            data: dict[str, Any] = orjson.loads(await resp.read())
            return data

    async def reset(self) -> None:
        async with aiohttp.ClientSession() as session, session.post(
                f"{self.info['url']}/_sim/reset") as resp:
            await resp.read()

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


@contextlib.asynccontextmanager
async def simulator(calls: int, *, rate: float | None = None,
                    latency_ms: float = 0.0) -> AsyncIterator[Sim]:
    command = [sys.executable, "-m", "auditor", "simulate", "--json", "--frozen-clock",
               "--calls", str(calls), "--seed", str(SEED)]
    if rate is not None:
        command += ["--rate", f"{rate:g}"]
    if latency_ms:
        command += ["--latency-ms", f"{latency_ms:g}"]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30.0)
        info = orjson.loads(line) if line else None
        if not isinstance(info, dict) or "base_url" not in info:
            raise RuntimeError("simulator did not announce itself")
        yield Sim(proc, info, calls, rate, latency_ms)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 10.0)
        except TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
        if proc.returncode not in (0, -signal.SIGTERM):
            raise RuntimeError(f"simulator exited {proc.returncode}: {err.decode()[-500:]}")


# -- inputs and outputs -----------------------------------------------------------------------


def write_ids(path: Path, ids: Iterable[str]) -> int:
    """One ``callId`` column, as a user's export would have it."""
    count = 0
    with open(path, "w") as out:
        out.write("callId\n")
        for call_id in ids:
            out.write(call_id)
            out.write("\n")
            count += 1
    return count


@contextlib.contextmanager
def scratch(prefix: str) -> Any:
    with tempfile.TemporaryDirectory(prefix=f"auditor-bench-{prefix}-") as tmp:
        yield Path(tmp)


def audit_config(sim: Sim, inputs: Sequence[Path], output: Path, *, rate: float | None,
                 concurrency: int | None = None) -> AuditConfig:
    return AuditConfig(
        inputs=[str(p) for p in inputs], output=str(output), account_id=sim.account_id,
        credentials=OAuth2Credentials(str(sim.info["client_id"]),
                                      Secret(str(sim.info["client_secret"]))),
        base_url=sim.base_url, token_url=sim.token_url, rate=rate,
        concurrency=concurrency, progress=False, fresh=True,
    )


async def run_auditor(sim: Sim, inputs: Sequence[Path], output: Path, *, rate: float | None,
                      concurrency: int | None = None) -> RunSummary:
    """The whole pipeline, in this process, with default settings but for the rate."""
    return await Audit(audit_config(sim, inputs, output, rate=rate,
                                    concurrency=concurrency)).run()


def auditor_command(sim: Sim, inputs: Sequence[Path], output: Path,
                    rate: float) -> tuple[list[str], dict[str, str]]:
    """``python -m auditor run ...`` and its environment, as a user runs it."""
    command = [sys.executable, "-m", "auditor", "run", *map(str, inputs), "--output",
               str(output), "--base-url", sim.base_url, "--token-url", sim.token_url,
               "--rate", f"{rate:g}", "--no-progress", "--fresh"]
    env = dict(os.environ, BW_CLIENT_ID=str(sim.info["client_id"]),
               BW_CLIENT_SECRET=str(sim.info["client_secret"]), BW_ACCOUNT_ID=sim.account_id)
    return command, env


# -- correctness ------------------------------------------------------------------------------


def check_dataset(output: Path, population: Population, ids: Sequence[str], *,
                  sample: int | None = None) -> dict[str, Any]:
    """Every input id exactly once, with the status the simulator implies, and ok rows
    equal to the simulator's bodies field by field (all of them, or every k-th for *sample*).
    """
    table = sink.read_dataset(output)
    got = table.column("call_id")
    unique = pc.unique(got)
    wanted = pa.array(ids, pa.string())
    lost = pc.sum(pc.invert(pc.is_in(wanted, value_set=unique))).as_py() or 0
    extra = pc.sum(pc.invert(pc.is_in(unique, value_set=wanted))).as_py() or 0
    duplicates = table.num_rows - len(unique)
    statuses = table.column("status").cast(pa.string()).to_pylist()
    row_ids = got.to_pylist()
    wrong_status = 0
    ok_index: list[int] = []
    for i, (call_id, status) in enumerate(zip(row_ids, statuses, strict=True)):
        expected = STATUS_OK if population.visible(call_id) else STATUS_NOT_FOUND
        if status != expected:
            wrong_status += 1
        elif status == STATUS_OK:
            ok_index.append(i)
    step = max(1, len(ok_index) // sample) if sample else 1
    checked = ok_index[::step]
    mismatches = _mismatches(table.take(checked), population) if checked else 0
    result = {
        "rows": table.num_rows, "lost_ids": lost, "unexpected_ids": extra,
        "duplicate_rows": duplicates, "wrong_status": wrong_status,
        "ok_rows_checked": len(checked), "ok_rows_differing": mismatches,
    }
    result["ok"] = not (lost or extra or duplicates or wrong_status or mismatches)
    return result


def _mismatches(rows: pa.Table, population: Population) -> int:
    got = rows.select(list(DATA_COLUMNS)).to_pylist()
    expected = build_batch([
        Outcome(row["call_id"], STATUS_OK, 200, 1, time.time(), None,
                population.body(row["call_id"]))
        for row in got
    ]).select(list(DATA_COLUMNS)).to_pylist()
    return sum(_normal(a) != _normal(b) for a, b in zip(got, expected, strict=True))


def _normal(row: dict[str, Any]) -> dict[str, Any]:
    # a map<string, string> comes back as a list of pairs, in any order
    return {k: sorted(v) if isinstance(v, list) else v for k, v in row.items()}
