"""One audit run: reader → bounded queue → workers → writer, with a summary at the end.

Data flows one way.  The reader thread streams ids out of the inputs, drops duplicates and
ids an earlier run already finished, and turns malformed ids into ``invalid_id`` outcomes
without sending them.  Workers take valid ids from a bounded queue, pass the rate gate, and
fetch.  One writer task owns the dataset and writes one part file per row group.  Both
queues are bounded, so memory does not grow with the input.

A stop (SIGINT/SIGTERM via :meth:`Audit.request_stop`, or refused credentials) ends reading
and abandons in-flight requests; the writer still flushes every outcome it has, so nothing
fetched is lost, and a rerun fetches exactly the ids that have no row yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditor import sink, sources
from auditor.callids import is_valid_call_id
from auditor.client import AuthError, VoiceClient
from auditor.config import AuditConfig
from auditor.fetch import FetchStats, fetch_call
from auditor.limits import RateGate
from auditor.records import STATUS_INVALID_ID, Outcome, build_batch
from auditor.retry import RetryPolicy

EXIT_OK, EXIT_FAILED_IDS, EXIT_BAD_INPUT, EXIT_AUTH = 0, 1, 2, 3
_QUEUE_SLOTS = 1024
#: Fetched-but-unwritten rows wait here; small, because a crash loses what is in it.
_OUTCOME_SLOTS = 256


@dataclass
class RunSummary:
    """What one run did; printed at the end and saved as ``_auditor/runs/<run>.json``."""

    run_id: str
    output: str
    status_counts: dict[str, int] = field(default_factory=dict)
    disconnect_causes: dict[str, int] = field(default_factory=dict)
    verstats: dict[str, int] = field(default_factory=dict)
    ids_read: int = 0
    skipped: int = 0  # duplicates, and ids an earlier run already finished
    requests: int = 0
    throttled: int = 0
    retried: int = 0
    tokens_fetched: int = 0
    elapsed_seconds: float = 0.0
    achieved_rate: float = 0.0
    configured_rate: float | None = None
    settled_rate: float | None = None
    rate_cuts: int = 0
    max_workers: int = 0
    parts_written: int = 0
    superseded_failures_removed: int = 0
    stopped: str | None = None  # "SIGINT", "SIGTERM", "auth", "input" when the run ended early
    error: str | None = None
    exit_code: int = EXIT_OK

    @property
    def rows_written(self) -> int:
        return sum(self.status_counts.values())

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["rows_written"] = self.rows_written
        return data


@dataclass
class Progress:
    """Live counters the progress display reads; written only by the pipeline."""

    total_estimate: int | None = None
    skipped: int = 0  # duplicates, and ids finished by an earlier run
    written: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    workers: int = 0


class Audit:
    """A single run over one output directory; see :func:`auditor.run_audit`."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self.progress = Progress()
        self._stop = asyncio.Event()
        self._stop_reason: str | None = None
        self._fatal: BaseException | None = None
        self.run_id = sink.new_run_id()
        self.summary = RunSummary(self.run_id, str(Path(config.output)))
        #: ids that failed in an earlier run and were fetched again in this one
        self.reaudited: set[str] = set()

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    def fail(self, exc: BaseException) -> None:
        """A fatal error (refused credentials, unreadable input): stop, keep what we have."""
        if self._fatal is None:
            self._fatal = exc
        self.request_stop("auth" if isinstance(exc, AuthError) else "input")

    # -- preflight -------------------------------------------------------------------------

    def preflight(self) -> tuple[list[sources.InputFile], sink.ResumeState]:
        """Everything that can fail before the first request: inputs, then the output dir."""
        inputs = sources.open_inputs(self.config.inputs, self.config.id_column)
        state = sink.prepare_output(self.config.output, self.config.fresh)
        self.progress.total_estimate = _estimate_rows(inputs)
        return inputs, state

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        inputs, state = await asyncio.to_thread(self.preflight)
        started = time.monotonic()
        summary = self.summary
        summary.configured_rate = self.config.rate
        ids: asyncio.Queue[str] = asyncio.Queue(_QUEUE_SLOTS)
        outcomes: asyncio.Queue[Outcome | None] = asyncio.Queue(_OUTCOME_SLOTS)
        writer = sink.PartWriter(self.config.output, self.run_id)
        stats = FetchStats()
        gate = RateGate(self.config.rate)
        connector = aiohttp.TCPConnector(limit=self.config.max_concurrency + 8)
        timeout = aiohttp.ClientTimeout(
            total=self.config.timeout, sock_connect=self.config.connect_timeout
        )
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, trust_env=False
        ) as session:
            client = VoiceClient(
                session,
                self.config.base_url,
                self.config.account_id,
                self.config.credentials,
                self.config.token_url,
                self.config.max_body_bytes,
            )
            pool = _WorkerPool(self, ids, outcomes, client, gate, stats)
            writer_task = asyncio.create_task(self._write(outcomes, writer))
            reader_task = asyncio.create_task(self._read(inputs, state, ids, outcomes))
            pool.start()
            stop_task = asyncio.create_task(self._stop.wait())
            try:
                done_reading = asyncio.create_task(self._drain(reader_task, ids))
                await asyncio.wait({done_reading, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                if not done_reading.done():
                    done_reading.cancel()
                    reader_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await done_reading
                if reader_task.done() and not reader_task.cancelled():
                    exc = reader_task.exception()
                    if exc is not None:
                        raise exc
            finally:
                stop_task.cancel()
                reader_task.cancel()
                for outcome in await pool.close():
                    await outcomes.put(outcome)
                await outcomes.put(None)
                await writer_task
            summary.tokens_fetched = client.tokens.tokens_fetched if client.tokens else 0

        summary.superseded_failures_removed = await asyncio.to_thread(
            sink.drop_superseded_failures,
            self.config.output,
            self.reaudited,
            writer.parts,
        )
        elapsed = time.monotonic() - started
        summary.elapsed_seconds = round(elapsed, 3)
        summary.requests = stats.requests
        summary.throttled = stats.throttled
        summary.retried = stats.retried
        summary.achieved_rate = round(stats.requests / elapsed, 2) if elapsed > 0 else 0.0
        summary.rate_cuts = gate.adaptive.cuts
        settled = gate.adaptive.last_rate
        summary.settled_rate = round(settled, 2) if settled is not None else None
        summary.max_workers = pool.max_workers
        summary.parts_written = len(writer.parts)
        summary.stopped = self._stop_reason
        summary.exit_code = self._exit_code()
        await asyncio.to_thread(
            sink.write_run_summary, self.config.output, self.run_id, summary.as_dict()
        )
        return summary

    def _exit_code(self) -> int:
        if isinstance(self._fatal, AuthError):
            self.summary.error = str(self._fatal)
            return EXIT_AUTH
        if isinstance(self._fatal, sources.InputError):
            self.summary.error = str(self._fatal)
            return EXIT_BAD_INPUT
        if self._stop_reason == "SIGINT":
            return 130
        if self._stop_reason == "SIGTERM":
            return 143
        return EXIT_FAILED_IDS if self.summary.status_counts.get("failed") else EXIT_OK

    # -- stages ----------------------------------------------------------------------------

    async def _drain(self, reader: asyncio.Task[None], ids: asyncio.Queue[str]) -> None:
        await reader
        await ids.join()

    async def _read(
        self,
        inputs: list[sources.InputFile],
        state: sink.ResumeState,
        ids: asyncio.Queue[str],
        outcomes: asyncio.Queue[Outcome | None],
    ) -> None:
        """Stream ids into the queues; the blocking file reading runs in a thread."""
        counter = _RowCounter(sources.iter_id_batches(inputs))
        unique = sources.unique_ids(counter, state.done)
        kept = 0
        try:
            while not self._stop.is_set():
                batch = await asyncio.to_thread(next, unique, None)
                if batch is None:
                    break
                kept += len(batch)
                self.summary.ids_read = counter.rows
                self.summary.skipped = self.progress.skipped = counter.rows - kept
                for call_id in batch:
                    if is_valid_call_id(call_id):
                        if call_id in state.failed:
                            self.reaudited.add(call_id)
                        await ids.put(call_id)
                    else:
                        await outcomes.put(_invalid(call_id))
        except sources.InputError as exc:
            self.fail(exc)

    async def _write(
        self, outcomes: asyncio.Queue[Outcome | None], writer: sink.PartWriter
    ) -> None:
        """The only task that touches the dataset: buffer outcomes, write one part per group.

        A part is written when the buffer holds a row group, when ``flush_seconds`` pass
        (so a slow run still publishes as it goes), and at the end.
        """
        buffer: list[Outcome] = []
        deadline = time.monotonic() + self.config.flush_seconds
        while True:
            try:
                timeout = max(0.0, deadline - time.monotonic())
                item = await asyncio.wait_for(outcomes.get(), timeout)
            except TimeoutError:
                item = _TICK
            if item is None:
                break
            if item is not _TICK:
                buffer.append(item)
                self.progress.written += 1
                self.progress.by_status[item.status] += 1
            if len(buffer) >= self.config.row_group_rows or time.monotonic() >= deadline:
                if buffer:
                    await asyncio.to_thread(self._flush, buffer, writer)
                    buffer = []
                deadline = time.monotonic() + self.config.flush_seconds
        if buffer:
            await asyncio.to_thread(self._flush, buffer, writer)

    def _flush(self, buffer: list[Outcome], writer: sink.PartWriter) -> None:
        """Runs in a thread: normalise, write the part, tally the summary's counts."""
        batch = build_batch(buffer, self.run_id)
        writer.write(batch)
        _tally(self.summary.status_counts, batch.column("status"))
        _tally(self.summary.disconnect_causes, batch.column("disconnect_cause"))
        _tally(self.summary.verstats, batch.column("stir_shaken_verstat"))


_TICK = Outcome("", "", None, 0, 0.0)  # a wake-up with nothing to write


def _estimate_rows(inputs: list[sources.InputFile]) -> int | None:
    """Rows in the inputs, for the progress bar's ETA; None when it would cost a full read.

    Parquet footers hold the count.  Plain CSV files are counted by newlines, which runs at
    disk speed; gzip and stdin are not counted.
    """
    total = 0
    for item in inputs:
        if item.format == "parquet":
            total += pq.ParquetFile(item.path).metadata.num_rows
        elif item.format == "csv" and item.path != "-":
            with open(item.path, "rb") as handle:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
            total += max(0, lines - 1)
        else:
            return None
    return total


def _invalid(call_id: str) -> Outcome:
    return Outcome(
        call_id,
        STATUS_INVALID_ID,
        None,
        0,
        time.time(),
        "not a Bandwidth call id (c- followed by letters, digits and dashes, at most 128)",
    )


def _tally(counts: dict[str, int], column: pa.Array) -> None:
    for item in pc.value_counts(column.cast(pa.string())).to_pylist():
        value = item["values"]
        if value is not None:
            counts[value] = counts.get(value, 0) + item["counts"]


class _RowCounter:
    """Counts the rows flowing out of the input batches (read in the reader thread)."""

    def __init__(self, batches: Iterator[list[str]]) -> None:
        self._batches = batches
        self.rows = 0

    def __iter__(self) -> Iterator[list[str]]:
        for batch in self._batches:
            self.rows += len(batch)
            yield batch


class _WorkerPool:
    """Workers that fetch ids from the queue; their number follows Little's law.

    With ``--concurrency N`` there are exactly N.  In auto mode the pool starts small and,
    twice a second, resizes to ``rate x latency x 1.5 + 2`` (the requests that must be in
    flight to hold the rate at the observed latency, with slack for its spread), capped at
    ``max_concurrency``.  Surplus workers retire between requests.
    """

    def __init__(
        self,
        audit: Audit,
        ids: asyncio.Queue[str],
        outcomes: asyncio.Queue[Outcome | None],
        client: VoiceClient,
        gate: RateGate,
        stats: FetchStats,
    ) -> None:
        self._audit = audit
        self._ids = ids
        self._outcomes = outcomes
        self._client = client
        self._gate = gate
        self._stats = stats
        self._policy = RetryPolicy(max_attempts=audit.config.max_attempts)
        self._tasks: set[asyncio.Task[None]] = set()
        self._controller: asyncio.Task[None] | None = None
        self._verified = asyncio.Event()
        self._orphans: list[Outcome] = []
        self._canary = asyncio.Lock()
        config = audit.config
        self.target = config.concurrency or min(config.max_concurrency, 8)
        self.max_workers = 0

    def start(self) -> None:
        self._resize()
        if self._audit.config.concurrency is None:
            self._controller = asyncio.create_task(self._autosize())

    async def close(self) -> list[Outcome]:
        """Stop every worker; returns outcomes that were fetched but not yet queued."""
        if self._controller is not None:
            self._controller.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._controller is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._controller
        return self._orphans

    def _resize(self) -> None:
        while len(self._tasks) < self.target:
            task = asyncio.create_task(self._work())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.max_workers = max(self.max_workers, len(self._tasks))
        self._audit.progress.workers = len(self._tasks)

    async def _autosize(self) -> None:
        config = self._audit.config
        rate = config.rate or math.inf
        while True:
            await asyncio.sleep(0.5)
            latency = self._stats.latency_ewma
            if latency is None:
                continue
            wanted = rate * latency * 1.5 + 2
            self.target = int(min(config.max_concurrency, max(2, math.ceil(wanted))))
            self._resize()

    async def _work(self) -> None:
        while len(self._tasks) <= self.target:
            call_id = await self._ids.get()
            try:
                outcome = await self._fetch(call_id)
            except AuthError as exc:
                self._audit.fail(exc)
                return
            except BaseException:
                self._ids.task_done()
                raise
            try:
                await self._outcomes.put(outcome)
            except asyncio.CancelledError:
                self._orphans.append(outcome)  # fetched: the writer still gets it
                raise
            finally:
                self._ids.task_done()
            self._audit.progress.requests = self._stats.requests
        task = asyncio.current_task()
        if task is not None:
            self._tasks.discard(task)
        self._audit.progress.workers = len(self._tasks)

    async def _fetch(self, call_id: str) -> Outcome:
        """The first request goes alone: bad credentials then cost one request, not N."""
        if not self._verified.is_set():
            async with self._canary:
                if not self._verified.is_set():
                    outcome = await fetch_call(
                        call_id, self._client, self._gate, self._policy, self._stats
                    )
                    self._verified.set()
                    return outcome
        return await fetch_call(call_id, self._client, self._gate, self._policy, self._stats)
