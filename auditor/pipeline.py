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
import collections
import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from auditor import sink, sources
from auditor.callids import is_valid_call_id
from auditor.client import AuthError
from auditor.config import AuditConfig
from auditor.connection import Connection, connect
from auditor.fetch import fetch_call
from auditor.idset import CompactIdSet
from auditor.partition import open_writer
from auditor.records import BUILD_CHUNK_ROWS, SCHEMA, STATUS_INVALID_ID, Outcome, build_batch

EXIT_OK, EXIT_FAILED_IDS, EXIT_BAD_INPUT, EXIT_AUTH, EXIT_OUTPUT = 0, 1, 2, 3, 4
_QUEUE_SLOTS = 1024
#: Fetched-but-unwritten rows wait here; small, because a crash loses what is in it.
_OUTCOME_SLOTS = 256
_RESIZE_SECONDS = 0.5  # how often, at most, the auto pool resizes
# Under a rate, a few spare workers always wait at the gate, so that a slow response or a
# busy moment in this process never leaves a permitted slot unused (the gate banks ~none).
_MIN_WORKERS = 8


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
    peak_memory_mb: float | None = None  # this process's peak resident memory so far
    parts_written: int = 0
    superseded_failures_removed: int = 0
    stopped: str | None = None  # SIGINT, SIGTERM, auth, input or output when it ended early
    unwritten: int = 0  # rows fetched but lost because the output could not be written
    error: str | None = None
    exit_code: int = EXIT_OK
    command: str = "run"  # or "discover", "nightly"
    #: what List Calls did (discover, nightly) and the nightly plan; see auditor.nightly
    details: dict[str, Any] = field(default_factory=dict)

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


@dataclass
class RunContext:
    """What an audit shares with the other stages of one job (``auditor nightly``).

    Its owner has prepared the output directory; the audit then uses this connection (so
    the rate limit, token and retry policy are shared), writes through this writer under
    this run id, and counts into this progress.
    """

    connection: Connection
    writer: sink.PartWriter
    run_id: str
    progress: Progress


class Audit:
    """A single run over one output directory; see :func:`auditor.run_audit`.

    The ids come from ``config.inputs`` (files), or from *ids* when given: any iterable of
    id strings, consumed in the reader thread (so it may block, e.g. read a file).  Ids
    from *ids* are deduplicated and validated like file input, but not filtered by what the
    output already holds: the caller has chosen them.
    """

    def __init__(
        self,
        config: AuditConfig,
        ids: Iterable[str] | None = None,
        context: RunContext | None = None,
    ) -> None:
        self.config = config
        self._ids = ids
        self._context = context
        self.progress = context.progress if context is not None else Progress()
        self._stop = asyncio.Event()
        self._stop_reason: str | None = None
        self._fatal: BaseException | None = None
        self.run_id = context.run_id if context is not None else sink.new_run_id()
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
        if isinstance(exc, AuthError):
            self.request_stop("auth")
        elif isinstance(exc, sink.OutputError):
            self.request_stop("output")
        elif isinstance(exc, sources.InputError):
            self.request_stop("input")
        else:
            self.request_stop("error")  # a bug: stop, write what was fetched, then raise it

    # -- preflight -------------------------------------------------------------------------

    def preflight(self) -> tuple[list[sources.InputFile], sink.ResumeState]:
        """Everything that can fail before the first request: inputs, then the output dir."""
        if self._ids is not None:
            if self._context is None:
                sink.prepare_output(self.config.output, self.config.fresh, scan=False)
            ids = self._ids
            self.progress.total_estimate = len(ids) if isinstance(ids, Sized) else None
            return [], sink.ResumeState()
        inputs = sources.open_inputs(self.config.inputs, self.config.id_column)
        state = sink.prepare_output(self.config.output, self.config.fresh)
        estimate = self.progress.total_estimate = sources.estimate_rows(inputs)
        if estimate and not len(state.done):
            # Sized once for the whole input: growing the table midway holds the old and the
            # new one at once, which was the run's memory peak at a million ids.
            state.done = CompactIdSet(expected=estimate)
        return inputs, state

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        inputs, state = await asyncio.to_thread(self.preflight)
        started = time.monotonic()
        summary = self.summary
        summary.configured_rate = self.config.rate
        ids: asyncio.Queue[str] = asyncio.Queue(_QUEUE_SLOTS)
        outcomes: asyncio.Queue[Outcome | None] = asyncio.Queue(_OUTCOME_SLOTS)
        context = self._context
        writer = context.writer if context else open_writer(self.config, self.run_id)
        parts_before = len(writer.parts)
        async with contextlib.AsyncExitStack() as scope:
            connection = (
                context.connection if context else await scope.enter_async_context(
                    connect(self.config)
                )
            )
            client, gate, stats = connection.client, connection.gate, connection.stats
            # A shared connection carries earlier stages' counts: report this stage's own.
            before = (stats.requests, stats.throttled, stats.retried)
            pool = _WorkerPool(self, ids, outcomes, connection)
            writing = asyncio.create_task(self._write(outcomes, writer))
            reading = asyncio.create_task(self._read(inputs, state, ids, outcomes))
            stopping = asyncio.create_task(self._stop.wait())
            pool.start()
            try:
                # Done when every id is read and settled, or when something asks to stop.
                await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reading, stopping):
                    task.cancel()
                await asyncio.gather(reading, stopping, return_exceptions=True)
                for outcome in await pool.close():
                    await outcomes.put(outcome)
                await outcomes.put(None)
                await writing
            error = None if reading.cancelled() else reading.exception()
            if error is None and self._stop_reason == "error":
                error = self._fatal
            if error is not None:
                raise error  # a bug, not bad input: InputError is handled in _read
            summary.tokens_fetched = client.tokens.tokens_fetched if client.tokens else 0

        summary.superseded_failures_removed = await asyncio.to_thread(
            sink.drop_superseded_failures,
            self.config.output,
            self.reaudited,
            writer.parts,
        )
        elapsed = time.monotonic() - started
        summary.elapsed_seconds = round(elapsed, 3)
        summary.requests = stats.requests - before[0]
        summary.throttled = stats.throttled - before[1]
        summary.retried = stats.retried - before[2]
        summary.achieved_rate = round(summary.requests / elapsed, 2) if elapsed > 0 else 0.0
        summary.rate_cuts = gate.adaptive.cuts
        settled = gate.adaptive.last_rate
        summary.settled_rate = round(settled, 2) if settled is not None else None
        summary.max_workers = pool.max_workers
        summary.peak_memory_mb = peak_memory_mb()
        summary.parts_written = len(writer.parts) - parts_before
        summary.stopped = self._stop_reason
        summary.exit_code = self._exit_code()
        try:
            await asyncio.to_thread(
                sink.write_run_summary, self.config.output, self.run_id, summary.as_dict()
            )
        except OSError as exc:
            note = f"run summary not saved ({exc.strerror or type(exc).__name__})"
            summary.error = f"{summary.error}; {note}" if summary.error else note
        return summary

    def _exit_code(self) -> int:
        if isinstance(self._fatal, AuthError):
            self.summary.error = str(self._fatal)
            return EXIT_AUTH
        if isinstance(self._fatal, sources.InputError):
            self.summary.error = str(self._fatal)
            return EXIT_BAD_INPUT
        if isinstance(self._fatal, sink.OutputError):
            self.summary.error = f"{self._fatal}; {self.summary.unwritten} fetched rows unwritten"
            return EXIT_OUTPUT
        if self._stop_reason == "SIGINT":
            return 130
        if self._stop_reason == "SIGTERM":
            return 143
        return EXIT_FAILED_IDS if self.summary.status_counts.get("failed") else EXIT_OK

    # -- stages ----------------------------------------------------------------------------

    async def _read(
        self,
        inputs: list[sources.InputFile],
        state: sink.ResumeState,
        ids: asyncio.Queue[str],
        outcomes: asyncio.Queue[Outcome | None],
    ) -> None:
        """Stream ids into the queues, then wait until workers have settled every one.

        The blocking file reading runs in a thread, one batch at a time.
        """
        batches = sources.iter_id_batches(inputs) if self._ids is None else _batched(self._ids)
        counter = _RowCounter(batches)
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
                        try:
                            ids.put_nowait(call_id)  # a coroutine per id only when full
                        except asyncio.QueueFull:
                            await ids.put(call_id)
                    else:
                        await outcomes.put(_invalid(call_id))
            await ids.join()  # every queued id fetched and handed to the writer
        except sources.InputError as exc:
            self.fail(exc)

    async def _write(
        self, outcomes: asyncio.Queue[Outcome | None], writer: sink.PartWriter
    ) -> None:
        """The only task that touches the dataset: gather outcomes, write one part per group.

        A part is written when it holds a row group, when ``flush_seconds`` pass (so a slow
        run still publishes as it goes), and at the end.  Outcomes are normalised as they
        come and the parts written on the writer's thread (see :class:`_Parts`), so this
        task keeps draining the queue meanwhile.
        """
        parts = _Parts(
            self.config.row_group_rows,
            self.run_id,
            write=lambda batches: self._flush(batches, writer),
            failed=lambda exc, rows: self._unwritten(exc, rows, writer),
        )
        flush_seconds = self.config.flush_seconds
        deadline = time.monotonic() + flush_seconds
        # The deadline wakes an idle writer with a _TICK in the queue, not with a timeout on
        # each get: this task keeps up with the workers, so it mostly waits on an empty
        # queue, and wait_for() costs a task, a timer and two extra event-loop turns per
        # item, about as much as the request itself.
        loop = asyncio.get_running_loop()
        alarm = loop.call_later(flush_seconds, _wake, outcomes)
        try:
            while True:
                try:
                    item = outcomes.get_nowait()
                except asyncio.QueueEmpty:
                    item = await outcomes.get()
                if item is None:
                    break
                if item is not _TICK:
                    await parts.add(item)
                    self.progress.written += 1
                    self.progress.by_status[item.status] += 1
                if parts.full or time.monotonic() >= deadline:
                    await parts.publish()
                    deadline = time.monotonic() + flush_seconds
                    alarm.cancel()
                    alarm = loop.call_later(flush_seconds, _wake, outcomes)
            await parts.publish()
            await parts.drain()
        finally:
            alarm.cancel()
            parts.close()

    def _unwritten(self, exc: OSError, rows: int, writer: sink.PartWriter) -> None:
        """A part could not be written (disk full, folder removed): stop, say how much."""
        self.summary.unwritten += rows
        reason = exc.strerror or type(exc).__name__
        self.fail(sink.OutputError(f"{writer.directory}: cannot write a part ({reason})"))

    def _flush(self, batches: list[pa.RecordBatch], writer: sink.PartWriter) -> None:
        """Runs in the writer thread: write the chunks as one part, tally the summary's counts."""
        # Only the dictionaries are merged: the Parquet writer takes the chunked columns into
        # the one row group as they are, so the part is never copied into a single batch.
        table = pa.Table.from_batches(batches, schema=SCHEMA).unify_dictionaries()
        writer.write(table)
        _tally(self.summary.status_counts, table.column("status"))
        _tally(self.summary.disconnect_causes, table.column("disconnect_cause"))
        _tally(self.summary.verstats, table.column("stir_shaken_verstat"))


_TICK = Outcome("", "", None, 0, 0.0)  # a wake-up with nothing to write


def _wake(outcomes: asyncio.Queue[Outcome | None]) -> None:
    # A full queue needs no wake-up: the writer checks the deadline after every item.
    with contextlib.suppress(asyncio.QueueFull):
        outcomes.put_nowait(_TICK)

#: Jobs (chunk builds, part writes) queued on or running in the writer thread at a time.
_WRITER_BACKLOG = 2


class _Parts:
    """The part being gathered, normalised a chunk at a time, and the thread that writes.

    Outcomes are handed to :func:`~auditor.records.build_batch`
    :data:`~auditor.records.BUILD_CHUNK_ROWS` at a time as they come, so a row group waits
    as Arrow chunks (~0.4 KB a row) rather than as outcomes with their JSON bodies and, at
    build time, the decoded dicts of all of them.  A chunk never straddles two parts: every
    part holds one row group of at most *group_rows* rows.

    Builds and part writes run on one thread of their own, in the order they are queued,
    while the event loop goes on; at most :data:`_WRITER_BACKLOG` of them are queued or
    running, and queueing another first waits for the oldest, so a slow disk holds back
    the workers rather than growing memory.  One thread, not ``asyncio.to_thread``'s pool:
    the jobs are ordered anyway, and every thread that allocates gets a glibc malloc arena
    of its own, which keeps the memory it freed.
    """

    def __init__(
        self,
        group_rows: int,
        run_id: str,
        write: Callable[[list[pa.RecordBatch]], None],
        failed: Callable[[OSError, int], None],
    ) -> None:
        self._group_rows = group_rows
        self._run_id = run_id
        self._write = write  # on the writer thread: publish one part made of these chunks
        self._failed = failed  # a part's write raised OSError: (error, its rows)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="auditor-writer")
        self._backlog: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._outcomes: list[Outcome] = []  # not yet handed to a build
        self._chunks: list[asyncio.Future[pa.RecordBatch]] = []  # built or being built
        self._rows = 0  # in the part: chunks and outcomes

    @property
    def full(self) -> bool:
        """Whether the part holds a whole row group."""
        return self._rows >= self._group_rows

    async def add(self, outcome: Outcome) -> None:
        """Add *outcome* to the part; may wait for room to queue a build."""
        self._outcomes.append(outcome)
        self._rows += 1
        if len(self._outcomes) >= BUILD_CHUNK_ROWS or self.full:
            await self._build()

    async def publish(self) -> None:
        """Queue the part's write (if it has rows), and begin the next part."""
        await self._build()
        if not self._chunks:
            return
        await self._make_room()
        self._backlog.append(asyncio.ensure_future(self._write_part(self._chunks, self._rows)))
        self._chunks, self._rows = [], 0

    async def _write_part(self, chunks: list[asyncio.Future[pa.RecordBatch]], rows: int) -> None:
        batches = await asyncio.gather(*chunks)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._write, batches)
        except OSError as exc:
            self._failed(exc, rows)

    async def drain(self) -> None:
        """Wait for every queued job; the first that failed raises."""
        while self._backlog:
            await self._backlog.popleft()

    def close(self) -> None:
        for job in self._backlog:
            job.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _build(self) -> None:
        if not self._outcomes:
            return
        await self._make_room()
        chunk = asyncio.get_running_loop().run_in_executor(
            self._executor, build_batch, self._outcomes, self._run_id
        )
        self._backlog.append(chunk)
        self._chunks.append(chunk)
        self._outcomes = []

    async def _make_room(self) -> None:
        while len(self._backlog) >= _WRITER_BACKLOG:
            await self._backlog.popleft()


def _batched(ids: Iterable[str], size: int = 4096) -> Iterator[list[str]]:
    """Stripped, non-blank ids in lists of at most *size*, like file input gives them."""
    batch: list[str] = []
    for raw in ids:
        call_id = raw.strip()
        if call_id:
            batch.append(call_id)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def _invalid(call_id: str) -> Outcome:
    return Outcome(
        call_id,
        STATUS_INVALID_ID,
        None,
        0,
        time.time(),
        "not a Bandwidth call id (c- followed by letters, digits and dashes, at most 128)",
    )


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process image (Linux ``VmHWM``), in MB.

    Not ``getrusage``: after fork and exec, Linux folds the *parent's* resident size into
    the child's ``ru_maxrss``, so a small process started by a big one reports the big one.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


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

    With ``--concurrency N`` there are exactly N.  In auto mode the pool starts at 8 and,
    twice a second, resizes to ``rate x latency x 1.5 + 2`` (the requests that must be in
    flight to hold the rate at the observed latency, with slack for its spread; at least 8
    under a rate, so that a worker is always waiting at the gate), plus one for each worker
    asleep on a Retry-After or a backoff, capped at ``max_concurrency``.  Without a rate it
    probes instead (see :meth:`_wanted`).  Surplus workers retire between requests.
    """

    def __init__(
        self,
        audit: Audit,
        ids: asyncio.Queue[str],
        outcomes: asyncio.Queue[Outcome | None],
        connection: Connection,
    ) -> None:
        self._audit = audit
        self._ids = ids
        self._outcomes = outcomes
        # one client, gate, policy and counters for every request of the job
        self._client = connection.client
        self._gate = connection.gate
        self._stats = connection.stats
        self._policy = connection.policy
        self._tasks: set[asyncio.Task[None]] = set()
        self._controller: asyncio.Task[None] | None = None
        self._verified = asyncio.Event()
        self._orphans: list[Outcome] = []
        self._canary = asyncio.Lock()
        config = audit.config
        self.target = config.concurrency or min(config.max_concurrency, _MIN_WORKERS)
        self._planned = self.target  # auto mode: the target before sleeping workers are added
        self._congested = False  # auto mode: latency has shown queueing; grow step by step
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
        stats = self._stats
        base = math.inf  # the lowest smoothed latency seen: the round trip without queueing
        done_before, then = stats.requests, time.monotonic()
        while True:
            # Resize every two round trips (0.1 s at least, 0.5 s at most): each interval
            # then sees the last resize's effect, and a pool facing 50 ms reaches 256 in 0.5 s.
            latency = stats.latency_ewma
            await asyncio.sleep(
                _RESIZE_SECONDS if latency is None else min(_RESIZE_SECONDS, max(0.1, 2 * latency))
            )
            now = time.monotonic()
            done, elapsed = stats.requests - done_before, now - then
            done_before, then = stats.requests, now
            latency = stats.latency_ewma
            if latency is not None and done:
                base = min(base, latency)
                wanted = self._wanted(done / elapsed, latency, base, now)
                floor = _MIN_WORKERS if self._gate.configured is not None else 2
                self._planned = max(floor, math.ceil(wanted))
            # Workers asleep on a Retry-After or a backoff are not in flight: add as many.
            wanted_total = self._planned + stats.sleeping
            self.target = int(min(self._audit.config.max_concurrency, wanted_total))
            self._resize()

    def _wanted(self, throughput: float, latency: float, base: float, now: float) -> float:
        """How many requests should be in flight.

        Little's law at the rate: ``rate x latency`` requests are in flight on average, and
        1.5x plus 2 absorbs the latency's spread (the rate is the adaptive one once a 429
        has lowered it).  That is the answer while the rate binds, and, until requests
        have been seen to queue, whenever latency is within twice the unloaded round trip
        (``base``): a pool facing a slow API reaches its size in one step.

        Without a rate, or when requests complete well below it, the pool probes like TCP
        Vegas.  While latency stays within twice ``base``, more requests in flight finish
        more requests: it doubles (then, once it has seen queueing, grows by a quarter).
        When latency passes three times ``base``, requests only queue (at the server, or
        for this process's CPU): it shrinks to ``throughput x base`` with the same slack.
        The band between 2x and 3x is wide enough for a lognormal latency's noise.
        """
        rate = self._gate.configured
        adaptive = self._gate.adaptive.rate(now)
        if adaptive is not None:
            rate = adaptive if rate is None else min(rate, adaptive)
        little = math.inf
        if rate is not None:
            little = rate * latency * 1.5 + 2
            if throughput >= 0.9 * rate or (not self._congested and latency < 2.0 * base):
                return little
        if latency > 3.0 * base:
            self._congested = True
            return min(little, throughput * base * 1.5 + 2)
        if latency < 2.0 * base:
            return min(little, self._planned * (1.25 if self._congested else 2.0))
        return min(little, self._planned)

    async def _work(self) -> None:
        # The *_nowait calls skip a coroutine per queue operation when no wait is needed;
        # at thousands of requests a second that overhead is a visible share of the CPU.
        ids, outcomes = self._ids, self._outcomes
        while len(self._tasks) <= self.target:
            try:
                call_id = ids.get_nowait()
            except asyncio.QueueEmpty:
                call_id = await ids.get()
            try:
                if self._verified.is_set():
                    outcome = await fetch_call(
                        call_id, self._client, self._gate, self._policy, self._stats
                    )
                else:
                    outcome = await self._fetch(call_id)
            except AuthError as exc:
                self._audit.fail(exc)
                return
            except Exception as exc:  # a bug: end the run, keeping what was fetched, not hang it
                ids.task_done()
                self._audit.fail(exc)
                return
            except BaseException:
                ids.task_done()
                raise
            try:
                outcomes.put_nowait(outcome)
            except asyncio.QueueFull:
                try:
                    await outcomes.put(outcome)
                except asyncio.CancelledError:
                    self._orphans.append(outcome)  # fetched: the writer still gets it
                    ids.task_done()
                    raise
            ids.task_done()
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
