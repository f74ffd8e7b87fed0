"""What the user sees on stderr: live progress while running, and the summary at the end.

On a terminal, a rich progress bar with rate, ETA and counts.  Otherwise (cron, CI, pipes)
one plain log line every few seconds, which reads well in a log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import (
    Progress as RichProgress,
)
from rich.table import Table

from auditor.pipeline import Progress, RunSummary


def _counts_text(progress: Progress) -> str:
    counts = " ".join(f"{k}={v}" for k, v in sorted(progress.by_status.items()))
    elapsed = max(time.monotonic() - progress.started, 1e-9)
    return f"{progress.requests / elapsed:7.1f} req/s  workers={progress.workers}  {counts}"


@contextlib.asynccontextmanager
async def live_progress(
    progress: Progress, enabled: bool, stream: IO[str] = sys.stderr, interval: float = 5.0
) -> AsyncIterator[None]:
    """Show *progress* until the block exits: a bar on a terminal, log lines elsewhere."""
    if not enabled:
        yield
        return
    if stream.isatty():
        console = Console(file=stream)
        bar = RichProgress(
            TextColumn("[bold]auditing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[counts]}"),
            console=console,
            transient=True,
        )
        task = bar.add_task("audit", total=progress.total_estimate, counts="")

        def refresh() -> None:
            bar.update(
                task,
                completed=progress.written + progress.skipped,
                total=progress.total_estimate,
                counts=_counts_text(progress),
            )

        with bar:
            async with _every(0.25, refresh):
                yield
        return

    def log_line() -> None:
        total = f"/{progress.total_estimate}" if progress.total_estimate else ""
        done = progress.written + progress.skipped
        print(f"auditor: {done}{total} ids  {_counts_text(progress)}", file=stream, flush=True)

    async with _every(interval, log_line):
        yield


@contextlib.asynccontextmanager
async def _every(interval: float, callback: Callable[[], None]) -> AsyncIterator[None]:
    """Call *callback* every *interval* seconds while the block runs."""

    async def tick() -> None:
        while True:
            await asyncio.sleep(interval)
            callback()

    ticker = asyncio.create_task(tick())
    try:
        yield
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


def print_summary(summary: RunSummary, stream: IO[str] = sys.stderr) -> None:
    """The end-of-run summary: counts, causes, verstat, timing, rate and where the data is."""
    # Off a terminal rich assumes 80 columns, which would clip long disconnect causes.
    width = None if stream.isatty() else 132
    console = Console(file=stream, highlight=False, soft_wrap=True, width=width)
    console.print(
        f"[bold]auditor run {summary.run_id}[/bold]: {summary.rows_written} rows written, "
        f"{summary.skipped} ids skipped (duplicates or done earlier), "
        f"{summary.requests} requests in {summary.elapsed_seconds:.1f} s "
        f"({summary.achieved_rate:.1f} req/s)"
    )
    rate = f"configured rate {summary.configured_rate or 'unlimited'} req/s"
    if summary.settled_rate is not None:
        rate += f", settled at {summary.settled_rate:.1f} req/s after {summary.rate_cuts} cut(s)"
    console.print(f"{rate}; {summary.throttled} throttled (429), {summary.retried} retried")
    tables = (
        ("status", summary.status_counts),
        ("disconnect cause", summary.disconnect_causes),
        ("verstat", summary.verstats),
    )
    grid = Table.grid(padding=(0, 4))
    for _ in tables:
        grid.add_column(vertical="top")
    grid.add_row(*(_count_table(title, counts) for title, counts in tables))
    console.print(grid)
    if summary.stopped:
        console.print(f"stopped early: {summary.stopped}")
    if summary.error:
        console.print(f"[bold red]error:[/bold red] {summary.error}")
    memory = f", peak memory {summary.peak_memory_mb:.0f} MB" if summary.peak_memory_mb else ""
    console.print(f"output: {summary.output}{memory}")


def _count_table(title: str, counts: Mapping[str, int]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None)
    table.add_column()
    table.add_column(justify="right")
    for key, value in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(key, str(value))
    if not counts:
        table.add_row("-", "0")
    return table
