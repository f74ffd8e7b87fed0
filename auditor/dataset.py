"""Reading a dataset the way analysts should: the newest row of each call.

The dataset is append-only.  A call audited again (a call still ringing at one run and
ended at the next, a ``not_found`` that became visible, a ``failed`` fetched again) gets a
new row, and its old rows stay as history.  **The newest row wins**: per ``call_id``, the
row with the latest ``fetched_at`` (when its answer came), ties broken by the later
``audit_run`` (run ids start with the run's UTC start time).  Every reader applies that
rule; :data:`LATEST_SQL` is the DuckDB view the README documents, and :func:`latest_rows`
is the same rule in Arrow (used by ``auditor report`` and the nightly planner's tests).

:func:`scan_known` is what ``auditor nightly`` and ``auditor discover`` need to know about
earlier runs, read part by part so memory stays small: which calls are final (never asked
for again), which are still open, and which ``not_found`` ids deserve another look.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditor import sink
from auditor.idset import CompactIdSet
from auditor.records import STATUS_INVALID_ID, STATUS_NOT_FOUND, STATUS_OK

#: The state after which a call never changes again.
FINAL_STATE: Final = "disconnected"

#: DuckDB: one row per call, the newest.  ``{path}`` is the dataset directory.
LATEST_SQL: Final = """\
CREATE OR REPLACE VIEW calls AS
SELECT *
FROM read_parquet('{path}/**/*.parquet', hive_partitioning = true)
QUALIFY row_number() OVER (
    PARTITION BY call_id ORDER BY fetched_at DESC, audit_run DESC
) = 1;"""


def latest_sql(directory: str | os.PathLike[str]) -> str:
    return LATEST_SQL.format(path=str(directory).rstrip("/").replace("'", "''"))


def latest_rows(table: pa.Table) -> pa.Table:
    """*table* reduced to the newest row per ``call_id`` (the rule in the module doc).

    *table* must hold ``call_id``, ``fetched_at`` and ``audit_run``; row order is not kept.
    """
    if table.num_rows == 0:
        return table
    keys = pa.table(
        {
            "call_id": table.column("call_id"),
            "fetched_at": table.column("fetched_at"),
            "audit_run": table.column("audit_run"),
            "row": pa.array(range(table.num_rows), pa.int64()),
        }
    ).sort_by(
        [("call_id", "ascending"), ("fetched_at", "descending"), ("audit_run", "descending")]
    )
    ids = keys.column("call_id").combine_chunks()
    changed = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    first = pa.concat_arrays([pa.array([True]), changed.fill_null(True)])
    return table.take(keys.column("row").filter(first))


def read_latest(
    directory: str | os.PathLike[str], columns: Iterable[str] | None = None
) -> pa.Table:
    """The dataset's newest row per call (all columns, or *columns* plus nothing else)."""
    wanted = list(columns) if columns is not None else None
    needed = None
    if wanted is not None:
        needed = list(dict.fromkeys([*wanted, "call_id", "fetched_at", "audit_run"]))
    latest = latest_rows(sink.read_dataset(directory, needed))
    return latest.select(wanted) if wanted is not None else latest


@dataclass
class Known:
    """What earlier runs established, for planning the next one."""

    #: disconnected calls and invalid ids: their rows can never change
    final: CompactIdSet = field(default_factory=CompactIdSet)
    #: not_found twice, the second time long after the first: unknown or expired
    gone: CompactIdSet = field(default_factory=CompactIdSet)
    #: newest row not final: a call still queued/ringing/talking, or a failed fetch
    pending: list[str] = field(default_factory=list)
    #: not_found once, long enough ago that the call would be visible by now: look again
    recheck: list[str] = field(default_factory=list)
    #: not_found recently: too early to look again
    waiting: set[str] = field(default_factory=set)
    rows: int = 0
    parts: int = 0


_COLUMNS: Final = ["call_id", "status", "state", "fetched_at", "audit_run"]


def scan_known(
    directory: str | os.PathLike[str],
    now_ms: int,
    settle_ms: int,
    checked_at: Mapping[str, int] | None = None,
) -> Known:
    """Classify every call in *directory* by its rows (see :class:`Known`).

    ``not_found`` cannot tell a call not visible *yet* from an unknown or expired one.  So
    a ``not_found`` id is looked at once more when *settle_ms* has passed since its first
    ``not_found`` (a young call is visible by then), and is settled (``gone``) once a
    ``not_found`` came at least *settle_ms* after the first.  The time of a check is the
    ``as_of`` time of the run that made it (*checked_at*, by ``audit_run``), else its
    ``fetched_at``.
    """
    checked_at = checked_at or {}
    known = Known()
    # newest non-final row per call: (fetched_at ms, audit_run, status)
    latest: dict[str, tuple[int, str, str]] = {}
    not_found: dict[str, list[int]] = {}  # call_id -> [first check, last check]
    for part in sink.iter_parts(directory):
        table = pq.read_table(part, columns=_COLUMNS)
        known.parts += 1
        known.rows += table.num_rows
        status = table.column("status").cast(pa.string())
        state = table.column("state").cast(pa.string())
        is_final = pc.or_(
            pc.and_(pc.equal(status, STATUS_OK), pc.equal(state, FINAL_STATE)).fill_null(False),
            pc.equal(status, STATUS_INVALID_ID),
        )
        add = known.final.add
        for call_id in table.column("call_id").filter(is_final).to_pylist():
            add(call_id)
        rest = table.filter(pc.invert(is_final))
        if rest.num_rows == 0:
            continue
        rows = zip(
            rest.column("call_id").to_pylist(),
            rest.column("status").cast(pa.string()).to_pylist(),
            rest.column("fetched_at").cast(pa.int64()).to_pylist(),
            rest.column("audit_run").to_pylist(),
            strict=True,
        )
        for call_id, row_status, fetched_ms, run in rows:
            key = (fetched_ms, run or "", row_status)
            previous = latest.get(call_id)
            if previous is None or key[:2] > previous[:2]:
                latest[call_id] = key
            if row_status == STATUS_NOT_FOUND:
                when = checked_at.get(run or "", fetched_ms)
                span = not_found.get(call_id)
                if span is None:
                    not_found[call_id] = [when, when]
                else:
                    span[0], span[1] = min(span[0], when), max(span[1], when)
    for call_id, (_, _, row_status) in latest.items():
        if call_id in known.final:
            continue
        if row_status != STATUS_NOT_FOUND:
            known.pending.append(call_id)
            continue
        first, last = not_found[call_id]
        if last - first >= settle_ms:
            known.gone.add(call_id)
        elif now_ms - first >= settle_ms:
            known.recheck.append(call_id)
        else:
            known.waiting.add(call_id)
    return known
