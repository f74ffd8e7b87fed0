"""``auditor nightly``: make a dataset complete and fresh, incrementally, in one command.

Each run:

1. **Lists** (List Calls, :mod:`auditor.listing`) every call that started after the
   watermark, up to now, and writes each one not already final as a ``source = list`` row.
   The first run has no watermark and lists the whole retention window (7 days after
   hang-up, plus a day for calls that queued or lasted long).
2. **Moves the watermark** to ``now - settle`` (default 15 minutes), in a small state file
   ``DIR/_auditor/nightly.json`` written atomically, once every listed window is written.
   The watermark is a start time: every call that started at or before it was visible and
   has been listed.  Listing ``(watermark, now]`` rather than stopping at the watermark
   re-lists the last ``settle`` minutes at the next run: a call that became visible late
   (the service is "near-realtime"), or that was still queued (no start time, so no time
   filter matches it) and started just before the watermark, is caught then.  A window
   that could not be listed holds the watermark back to its start.
3. **Fetches one by one** (Get Call State, through the :class:`~auditor.pipeline.Audit`
   pipeline, sharing the list phase's rate limit, token and retry policy) only:

   * calls whose newest row is not final (``state`` other than ``disconnected``, or a
     ``failed`` fetch), unless this run's listing just returned them;
   * ids from ``--ids FILE`` that the listing did not return and no run has settled;
   * ``not_found`` ids due for a second look (:func:`auditor.dataset.scan_known`): a call
     younger than the visibility delay answers 404 at first.

   A final call (disconnected, or an invalid id) is never fetched again.

Nothing is ever rewritten: the newest row of a call wins for readers
(:mod:`auditor.dataset`).  So a run killed at any moment (even SIGKILL) leaves only whole
part files and the previous state file; the next run re-lists from the old watermark,
skips what is already final, and fetches what is still open.  An OS lock on
``DIR/_auditor/lock`` keeps two runs from writing one dataset at the same time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import orjson

from auditor import sink, sources
from auditor.client import AuthError
from auditor.config import AuditConfig
from auditor.connection import connect
from auditor.dataset import Known, scan_known
from auditor.discover import (
    ListedRows,
    ListPhase,
    exit_code_for,
    finish_summary,
    list_into,
    output_lock,
    save_summary,
)
from auditor.idset import CompactIdSet
from auditor.listing import DAY_MS, ListFilters, Window, format_ms
from auditor.partition import open_writer
from auditor.pipeline import EXIT_OK, Audit, Progress, RunContext, RunSummary

STATE_FILE: Final = "nightly.json"
STATE_FORMAT: Final = 1
#: The first run lists this far back: 7 days of retention after hang-up, plus a day.
FIRST_LOOKBACK_MS: Final = 8 * DAY_MS
DEFAULT_SETTLE_SECONDS: Final = 900.0
#: Run times older than this are forgotten (their rows have long expired).
_KEEP_RUNS_MS: Final = 30 * DAY_MS


@dataclass
class NightlyState:
    """``DIR/_auditor/nightly.json``."""

    watermark_ms: int | None = None
    last_success: str | None = None
    partition_by: str | None = None
    #: run id -> the run's "now" (epoch ms): when its not_found answers count as checked
    runs: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def path(directory: str | Path) -> Path:
        return Path(directory) / sink.STATE_DIR / STATE_FILE

    @classmethod
    def load(cls, directory: str | Path) -> NightlyState:
        path = cls.path(directory)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise sink.OutputError(f"{path}: cannot read ({exc.strerror})") from None
        try:
            data = orjson.loads(raw)
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            watermark = data.get("watermark_ms")
            runs = {str(k): int(v) for k, v in (data.get("runs") or {}).items()}
            return cls(
                None if watermark is None else int(watermark),
                data.get("last_success"),
                data.get("partition_by"),
                runs,
            )
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            raise sink.OutputError(
                f"{path}: not a nightly state file ({exc}); remove it to list the whole "
                "7-day window again"
            ) from None

    def save(self, directory: str | Path) -> None:
        data: dict[str, Any] = {
            "format": STATE_FORMAT,
            "watermark_ms": self.watermark_ms,
            "watermark": None if self.watermark_ms is None else format_ms(self.watermark_ms),
            "last_success": self.last_success,
            "partition_by": self.partition_by,
            "runs": self.runs,
        }
        sink.write_atomic(self.path(directory), orjson.dumps(data, option=orjson.OPT_INDENT_2))


class GetPlan:
    """The ids to fetch one by one, in the reader thread (it may read ``--ids``)."""

    def __init__(
        self, known: Known, listed: CompactIdSet, ids_inputs: list[sources.InputFile]
    ) -> None:
        self.known = known
        self.listed = listed
        self.inputs = ids_inputs
        self.counts: Counter[str] = Counter()

    def __iter__(self) -> Iterator[str]:
        known, listed, counts = self.known, self.listed, self.counts
        planned: set[str] = set()
        for reason, ids in (("open", known.pending), ("not_found_recheck", known.recheck)):
            for call_id in ids:
                if call_id in listed:
                    counts["relisted"] += 1
                else:
                    counts[reason] += 1
                    planned.add(call_id)
                    yield call_id
        for batch in sources.iter_id_batches(self.inputs):
            for call_id in batch:
                if call_id in listed:
                    counts["ids_listed"] += 1
                elif call_id in planned:
                    counts["ids_already_planned"] += 1
                elif call_id in known.final or call_id in known.gone:
                    counts["ids_settled"] += 1
                elif call_id in known.waiting:
                    counts["ids_not_found_waiting"] += 1
                else:
                    counts["ids_new_or_open"] += 1
                    yield call_id


class Nightly:
    """One ``auditor nightly`` run over ``config.output``.

    *ids_file*: extra ids to audit (``--ids``).  *as_of*: epoch seconds taken as "now"
    (default: the clock), for replays and simulator tests.
    """

    def __init__(
        self,
        config: AuditConfig,
        ids_file: str | None = None,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        as_of: float | None = None,
    ) -> None:
        self.config = config
        self.ids_file = ids_file
        self.settle_ms = math.ceil(settle_seconds * 1000)
        self.as_of = as_of
        self.progress = Progress()
        self.run_id = sink.new_run_id()
        self.summary = RunSummary(self.run_id, str(Path(config.output)), command="nightly")
        self._stop = asyncio.Event()
        self._stop_reason: str | None = None
        self._audit: Audit | None = None

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()
        if self._audit is not None:
            self._audit.request_stop(reason)

    def preflight(self) -> list[sources.InputFile]:
        """Inputs and output checked before any request (exit 2 on trouble)."""
        config = self.config
        ids_inputs = (
            sources.open_inputs([self.ids_file], config.id_column) if self.ids_file else []
        )
        sink.prepare_output(config.output, False, scan=False)
        return ids_inputs

    async def run(self) -> RunSummary:
        config, summary = self.config, self.summary
        started = time.monotonic()
        summary.configured_rate = config.rate
        ids_inputs = await asyncio.to_thread(self.preflight)
        with output_lock(config.output):
            if config.fresh:  # under the lock: never under another run's feet
                await asyncio.to_thread(sink.prepare_output, config.output, True, False)
                NightlyState.path(config.output).unlink(missing_ok=True)
            state = await asyncio.to_thread(NightlyState.load, config.output)
            if state.partition_by is not None and state.partition_by != (
                config.partition_by or "none"
            ):
                raise sink.OutputError(
                    f"{config.output}: the dataset is partitioned by {state.partition_by}; "
                    f"pass --partition-by {state.partition_by} (or start a new directory)"
                )
            now_ms = math.floor((self.as_of if self.as_of is not None else time.time()) * 1000)
            state.partition_by = config.partition_by or "none"
            state.runs = {r: t for r, t in state.runs.items() if t >= now_ms - _KEEP_RUNS_MS}
            state.runs[self.run_id] = now_ms
            await asyncio.to_thread(state.save, config.output)

            previous = state.watermark_ms
            start = previous + 1 if previous is not None else now_ms - FIRST_LOOKBACK_MS
            window = Window(start, now_ms) if start <= now_ms else None
            known = await asyncio.to_thread(
                scan_known, config.output, now_ms, self.settle_ms, state.runs
            )
            writer = open_writer(config, self.run_id)
            rows = ListedRows(writer, self.run_id, summary, self.progress, known.final)
            plan = GetPlan(known, rows.listed, ids_inputs)
            get_summary: RunSummary | None = None
            async with connect(config) as conn:
                phase = (
                    await list_into(conn, window, ListFilters(), rows, self._stop)
                    if window is not None
                    else None
                )
                listed_ok = phase is None or (phase.error is None and not phase.stats.stopped)
                if listed_ok:
                    state.watermark_ms = self._new_watermark(start, now_ms, phase)
                    await asyncio.to_thread(state.save, config.output)
                if listed_ok and not self._stop.is_set():
                    audit = Audit(
                        replace(config, fresh=False, inputs=[]),
                        ids=plan,
                        context=RunContext(conn, writer, self.run_id, self.progress),
                    )
                    self._audit = audit
                    get_summary = await audit.run()
                    self._audit = None
                finish_summary(summary, conn, started, len(writer.parts))

            self._conclude(summary, phase, get_summary, known, plan, rows, window, previous,
                           state)
            if summary.exit_code == EXIT_OK:
                state.last_success = self.run_id
                await asyncio.to_thread(state.save, config.output)
            await asyncio.to_thread(save_summary, summary)
        return summary

    def _new_watermark(self, start: int, now_ms: int, phase: ListPhase | None) -> int:
        """Every call that started at or before the result has been listed and written.

        ``now - settle``, held back to just before the first window that failed; never
        before this run's start (``start - 1`` is what the previous run guaranteed).
        """
        target = now_ms - self.settle_ms
        if phase is not None and phase.stats.failed_windows:
            target = min(target, min(w.start_ms for w in phase.stats.failed_windows) - 1)
        return max(start - 1, target)

    def _conclude(
        self,
        summary: RunSummary,
        phase: ListPhase | None,
        get_summary: RunSummary | None,
        known: Known,
        plan: GetPlan,
        rows: ListedRows,
        window: Window | None,
        previous: int | None,
        state: NightlyState,
    ) -> None:
        stats = phase.stats if phase is not None else None
        if get_summary is not None:
            for mine, theirs in (
                (summary.status_counts, get_summary.status_counts),
                (summary.disconnect_causes, get_summary.disconnect_causes),
                (summary.verstats, get_summary.verstats),
            ):
                for key, value in theirs.items():
                    mine[key] = mine.get(key, 0) + value
            summary.max_workers = get_summary.max_workers
            summary.unwritten = get_summary.unwritten
        list_requests = stats.requests if stats is not None else 0
        summary.ids_read = (stats.listed if stats else 0) + (
            get_summary.ids_read if get_summary else 0
        )
        summary.skipped = rows.already_final + rows.duplicates + (
            get_summary.skipped if get_summary else 0
        )
        summary.details = {
            "as_of": format_ms(state.runs[self.run_id]),
            "window": str(window) if window is not None else None,
            "watermark_before": None if previous is None else format_ms(previous),
            "watermark_after": (
                None if state.watermark_ms is None else format_ms(state.watermark_ms)
            ),
            "listing": stats.as_dict() if stats is not None else None,
            "rows": rows.as_dict(),
            "list_requests": list_requests,
            "get_requests": summary.requests - list_requests,
            "get_plan": dict(plan.counts),
            "known_before": {
                "rows": known.rows,
                "final": len(known.final),
                "open": len(known.pending),
                "not_found_recheck": len(known.recheck),
                "not_found_waiting": len(known.waiting),
                "not_found_gone": len(known.gone),
            },
        }
        error = phase.error if phase is not None else None
        code = exit_code_for(summary, error, self._stop_reason, bool(stats and stats.failed))
        if error is None and get_summary is not None and get_summary.exit_code != EXIT_OK:
            code = get_summary.exit_code
            summary.error = summary.error or get_summary.error
        if isinstance(error, AuthError) or (get_summary and get_summary.stopped == "auth"):
            summary.stopped = "auth"
        else:
            summary.stopped = self._stop_reason or (get_summary.stopped if get_summary else None)
        if stats is not None and stats.failed and summary.error is None:
            summary.error = f"{len(stats.failed)} window(s) could not be listed: {stats.failed[0]}"
        summary.exit_code = code
