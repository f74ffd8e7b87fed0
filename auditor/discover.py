"""``auditor discover``: every call that started in a time window, as dataset rows.

One List Calls sweep (:func:`auditor.listing.sweep`) over the window, each listed call
written as a row with ``source = "list"`` (same schema, same writer, same atomic parts as
``auditor run``).  A call already final in the output (disconnected, or an invalid id) is
not written again, so rerunning over an overlapping window adds only what changed.

:class:`ListedRows` is the piece ``auditor nightly`` shares: it turns swept windows into
parts, each call at most once per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from auditor import sink
from auditor.client import AuthError
from auditor.config import AuditConfig
from auditor.connection import Connection, connect
from auditor.dataset import FINAL_STATE, scan_known
from auditor.idset import CompactIdSet
from auditor.listing import ListFilters, ListStats, Window, sweep
from auditor.partition import open_writer
from auditor.pipeline import (
    EXIT_AUTH,
    EXIT_FAILED_IDS,
    EXIT_OK,
    EXIT_OUTPUT,
    Progress,
    RunSummary,
    _tally,
)
from auditor.records import Outcome, build_batch

LOCK_FILE = "lock"


@contextlib.contextmanager
def output_lock(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``DIR/_auditor/lock`` so two list-based jobs never write one dataset at once.

    An OS lock (flock): it goes away with the process, even after SIGKILL.
    """
    path = Path(directory) / sink.STATE_DIR / LOCK_FILE
    handle = open(path, "a+b")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise sink.OutputError(
                f"{directory}: another discover or nightly run is writing this dataset"
            ) from None
        yield
    finally:
        handle.close()


class ListedRows:
    """Writes swept windows into the dataset: each call once, calls already final skipped.

    Used as the ``on_window`` callback of :func:`~auditor.listing.sweep`.  ``listed``
    remembers every call id the sweep returned (compactly), for planning GETs after it.
    """

    def __init__(
        self,
        writer: sink.PartWriter,
        run_id: str,
        summary: RunSummary,
        progress: Progress,
        final: CompactIdSet | None = None,
    ) -> None:
        self.writer = writer
        self.run_id = run_id
        self.summary = summary
        self.progress = progress
        self.final = final
        self.listed = CompactIdSet()
        self.already_final = 0
        self.duplicates = 0
        self.not_final = 0  # written rows whose call had not ended yet

    async def __call__(self, window: Window, outcomes: list[Outcome]) -> None:
        keep: list[Outcome] = []
        for outcome in outcomes:
            call_id = outcome.call_id
            if not self.listed.add(call_id):
                self.duplicates += 1
            elif self.final is not None and call_id in self.final:
                self.already_final += 1
            else:
                keep.append(outcome)
                body = outcome.body or {}
                if body.get("state") != FINAL_STATE:
                    self.not_final += 1
        self.progress.skipped += len(outcomes) - len(keep)
        if keep:
            await asyncio.to_thread(self._flush, keep)
            self.progress.written += len(keep)
            self.progress.by_status["ok"] += len(keep)

    def _flush(self, rows: list[Outcome]) -> None:
        batch = build_batch(rows, self.run_id)
        self.writer.write(batch)
        _tally(self.summary.status_counts, batch.column("status"))
        _tally(self.summary.disconnect_causes, batch.column("disconnect_cause"))
        _tally(self.summary.verstats, batch.column("stir_shaken_verstat"))

    def as_dict(self) -> dict[str, int]:
        return {
            "calls_listed": len(self.listed),
            "rows_written": self.summary.rows_written,
            "already_final": self.already_final,
            "duplicates": self.duplicates,
            "not_final": self.not_final,
        }


@dataclass
class ListPhase:
    """The outcome of :func:`list_into`: sweep counters and the rows it wrote."""

    stats: ListStats
    rows: ListedRows
    error: BaseException | None = None  # AuthError or OutputError that stopped it


async def list_into(
    conn: Connection,
    window: Window,
    filters: ListFilters,
    rows: ListedRows,
    stop: asyncio.Event,
) -> ListPhase:
    """Sweep *window* into *rows*; refused credentials and unwritable output are caught."""
    stats = ListStats()
    phase = ListPhase(stats, rows)

    async def count_requests() -> None:
        while True:
            rows.progress.requests = conn.stats.requests
            await asyncio.sleep(0.25)

    ticker = asyncio.create_task(count_requests())
    try:
        await sweep(conn, window, rows, filters, stop=stop, stats=stats)
    except AuthError as exc:
        phase.error = exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        phase.error = sink.OutputError(f"{rows.writer.directory}: cannot write a part ({reason})")
    finally:
        ticker.cancel()
        rows.progress.requests = conn.stats.requests
    return phase


def finish_summary(
    summary: RunSummary, conn: Connection, started: float, parts: int
) -> None:
    """Request counters and timing of a list-based run, from its shared connection."""
    elapsed = time.monotonic() - started
    stats, gate = conn.stats, conn.gate
    summary.elapsed_seconds = round(elapsed, 3)
    summary.requests = stats.requests
    summary.throttled = stats.throttled
    summary.retried = stats.retried
    summary.achieved_rate = round(stats.requests / elapsed, 2) if elapsed > 0 else 0.0
    summary.rate_cuts = gate.adaptive.cuts
    settled = gate.adaptive.last_rate
    summary.settled_rate = round(settled, 2) if settled is not None else None
    summary.tokens_fetched = conn.client.tokens.tokens_fetched if conn.client.tokens else 0
    summary.parts_written = parts


def exit_code_for(summary: RunSummary, error: BaseException | None, stop_reason: str | None,
                  failed: bool) -> int:
    if isinstance(error, AuthError):
        summary.error = str(error)
        return EXIT_AUTH
    if isinstance(error, sink.OutputError):
        summary.error = str(error)
        return EXIT_OUTPUT
    if stop_reason == "SIGINT":
        return 130
    if stop_reason == "SIGTERM":
        return 143
    return EXIT_FAILED_IDS if failed else EXIT_OK


class Discover:
    """One ``auditor discover`` run: sweep *window* into ``config.output``."""

    def __init__(self, config: AuditConfig, window: Window, filters: ListFilters) -> None:
        self.config = config
        self.window = window
        self.filters = filters
        self.progress = Progress()
        self.run_id = sink.new_run_id()
        self.summary = RunSummary(self.run_id, str(Path(config.output)), command="discover")
        self._stop = asyncio.Event()
        self._stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    async def run(self) -> RunSummary:
        config, summary = self.config, self.summary
        started = time.monotonic()
        summary.configured_rate = config.rate
        await asyncio.to_thread(sink.prepare_output, config.output, False, False)
        with output_lock(config.output):
            if config.fresh:  # under the lock: never under another run's feet
                await asyncio.to_thread(sink.prepare_output, config.output, True, False)
            # Only calls that ended are skipped: a not_found id may be listed now.
            known = await asyncio.to_thread(scan_known, config.output, 0, 1 << 62)
            writer = open_writer(config, self.run_id)
            rows = ListedRows(writer, self.run_id, summary, self.progress, known.final)
            async with connect(config) as conn:
                phase = await list_into(conn, self.window, self.filters, rows, self._stop)
                finish_summary(summary, conn, started, len(writer.parts))
            stats = phase.stats
            summary.ids_read = stats.listed
            summary.skipped = rows.already_final + rows.duplicates
            summary.stopped = self._stop_reason or (
                "auth" if isinstance(phase.error, AuthError) else
                "output" if phase.error is not None else None
            )
            summary.details = {
                "window": str(self.window),
                "filters": {k: v for k, v in self.filters.params()},
                "listing": stats.as_dict(),
                "rows": rows.as_dict(),
                "requests_per_listed_call": (
                    round(summary.requests / stats.listed, 6) if stats.listed else None
                ),
            }
            summary.exit_code = exit_code_for(
                summary, phase.error, self._stop_reason, bool(stats.failed)
            )
            if stats.failed and summary.error is None:
                summary.error = (
                    f"{len(stats.failed)} window(s) could not be listed: {stats.failed[0]}"
                )
            save_summary(summary)
        return summary


def save_summary(summary: RunSummary) -> None:
    try:
        sink.write_run_summary(summary.output, summary.run_id, summary.as_dict())
    except OSError as exc:
        note = f"run summary not saved ({exc.strerror or type(exc).__name__})"
        summary.error = f"{summary.error}; {note}" if summary.error else note
