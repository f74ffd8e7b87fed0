"""What every performance benchmark shares: a simulator process, inputs, runs, and checks.

The simulator always runs as ``python -m auditor simulate --json --frozen-clock`` in its own
process, so on a small machine the client and the server each get a core.  Its clock is
frozen, so :func:`population` rebuilds, in this process, exactly the truth it serves, and
every benchmark can check its output row by row (``"ok"`` is that check, never a timing).
"""

from __future__ import annotations

import asyncio
import collections
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

from auditor import connection, sink
from auditor.config import AuditConfig, OAuth2Credentials, Secret
from auditor.limits import RateGate
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


class StatsPoller:
    """Samples the simulator's counters a few times a second while a run goes on.

    From the samples: the request rate the server saw over the steady part of a run (from
    the first second with traffic to the last one, less a margin at each end), not counting
    the few hundred milliseconds of start-up and tail that a whole-run average includes.
    """

    def __init__(self, sim: Sim, interval: float = 0.25) -> None:
        self.sim = sim
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (time, requests, 429s)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StatsPoller:
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        async with aiohttp.ClientSession() as session:
            await self._sample(session)  # the final counts

    async def _poll(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                await self._sample(session)
                await asyncio.sleep(self.interval)

    async def _sample(self, session: aiohttp.ClientSession) -> None:
        async with session.get(f"{self.sim.info['url']}/_sim/stats?ids=0") as resp:
            data = orjson.loads(await resp.read())
        self.samples.append((time.monotonic(), int(data["total_requests"]),
                             int(data["throttled"])))

    def steady_rate(self, margin: float = 1.0, admitted: bool = True) -> float | None:
        """Requests a second (429s left out when *admitted*) over the busy span, less
        *margin* seconds at each end."""
        busy = [s for s in self.samples if s[1] > self.samples[0][1]]
        if len(busy) < 2:
            return None
        first = next(s for s in self.samples if s[1] > self.samples[0][1])
        last = next(s for s in self.samples if s[1] == self.samples[-1][1])
        start, end = first[0] + margin, last[0] - margin
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1.0:
            return None
        a, b = inside[0], inside[-1]
        count = (b[1] - b[2]) - (a[1] - a[2]) if admitted else b[1] - a[1]
        return count / (b[0] - a[0])

    def rate_between(self, start: float, end: float) -> float | None:
        """Admitted requests a second between two offsets (s) from the first busy sample."""
        busy = [s for s in self.samples if s[1] > self.samples[0][1]]
        if not busy:
            return None
        t0 = busy[0][0]
        inside = [s for s in self.samples if t0 + start <= s[0] <= t0 + end]
        if len(inside) < 2:
            return None
        a, b = inside[0], inside[-1]
        return ((b[1] - b[2]) - (a[1] - a[2])) / (b[0] - a[0])


class SendLog(RateGate):
    """A rate gate that also keeps the peak number of sends in any sliding 1-second window."""

    instances: list[SendLog] = []  # noqa: RUF012 - instrumentation for one benchmark

    def __init__(self, rate: float | None, *args: Any, **kwargs: Any) -> None:
        super().__init__(rate, *args, **kwargs)
        self.recent: collections.deque[float] = collections.deque()
        self.peak_window = 0
        self.first: float | None = None
        self.last: float | None = None
        SendLog.instances.append(self)

    def _admitted(self, now: float) -> float:
        recent = self.recent
        recent.append(now)
        while recent[0] <= now - 1.0:
            recent.popleft()
        self.peak_window = max(self.peak_window, len(recent))
        if self.first is None:
            self.first = now
        self.last = now
        return super()._admitted(now)


@contextlib.contextmanager
def logging_sends() -> Any:
    """Make the next runs' rate gates :class:`SendLog`s (the benchmark reads them after)."""
    SendLog.instances.clear()
    original = connection.RateGate
    connection.RateGate = SendLog  # type: ignore[misc]
    try:
        yield SendLog.instances
    finally:
        connection.RateGate = original  # type: ignore[misc]


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
                 concurrency: int | None = None, http_client: str = "lean") -> AuditConfig:
    return AuditConfig(
        inputs=[str(p) for p in inputs], output=str(output), account_id=sim.account_id,
        credentials=OAuth2Credentials(str(sim.info["client_id"]),
                                      Secret(str(sim.info["client_secret"]))),
        base_url=sim.base_url, token_url=sim.token_url, rate=rate,
        concurrency=concurrency, progress=False, fresh=True, http_client=http_client,
    )


async def run_auditor(sim: Sim, inputs: Sequence[Path], output: Path, *, rate: float | None,
                      concurrency: int | None = None, http_client: str = "lean") -> RunSummary:
    """The whole pipeline, in this process, with default settings but for the rate."""
    return await Audit(audit_config(sim, inputs, output, rate=rate, concurrency=concurrency,
                                    http_client=http_client)).run()


@dataclass
class ObservedRun:
    """One whole-pipeline run against a simulator, and what both sides saw of it."""

    ids: list[str]
    summary: RunSummary
    stats: dict[str, Any]  # the simulator's counters after the run
    check: dict[str, Any]  # :func:`check_dataset` of the output
    poller: StatsPoller  # the server's counters sampled during the run
    sent_peak: int | None  # the most requests the auditor sent in any sliding second


async def observed_run(sim: Sim, name: str, rate: float) -> ObservedRun:
    """Audit every id *sim* serves at *rate*, in this process, watching the server's
    counters and the auditor's sends, then check the output against the truth."""
    population = sim.population()
    ids = list(population.ids())
    with scratch(name) as tmp:
        write_ids(tmp / "ids.csv", ids)
        with logging_sends() as gates:
            async with StatsPoller(sim) as poller:
                summary = await run_auditor(sim, [tmp / "ids.csv"], tmp / "out", rate=rate)
        stats = await sim.stats()
        check = check_dataset(tmp / "out", population, ids)
    sent_peak = gates[0].peak_window if gates else None
    return ObservedRun(ids, summary, stats, check, poller, sent_peak)


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
