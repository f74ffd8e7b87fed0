"""Hive-style date partitions: ``call_date=YYYY-MM-DD/part-<run>-<seq>.parquet``.

The date of a row is the UTC date of the call's ``start_time``.  When ``start_time`` is
null, the first of these that is set decides instead:

1. ``enqueued_time``: an outbound call still queued (it has no start yet);
2. ``fetched_at``: rows without a call body (``not_found``, ``failed``, ``invalid_id``),
   filed under the day they were audited.

So every row has a date, and readers can prune on ``call_date`` (DuckDB, polars, pandas
and Spark all read ``call_date`` from the folder name as a DATE).  A call whose newest row
lands in another folder than an older one (a queued call that started after midnight, a
``not_found`` that later became visible) is still one call: readers pick the newest row
per ``call_id`` (see :mod:`auditor.dataset`), never rows per folder.

The files inside the folders have exactly the unpartitioned schema (no ``call_date``
column), so every part of every layout passes the same schema check.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from auditor.config import AuditConfig
from auditor.sink import PartWriter

PARTITION_COLUMN: Final = "call_date"
PARTITION_CHOICES: Final = ("none", "date")
_DAY_MS: Final = 86_400_000


def call_dates(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """The ``YYYY-MM-DD`` partition value of every row (never null; see the module doc)."""
    moment = pc.coalesce(
        batch.column("start_time"), batch.column("enqueued_time"), batch.column("fetched_at")
    )
    millis = pc.cast(moment, pa.int64())
    days = pc.floor(pc.divide(pc.cast(millis, pa.float64()), float(_DAY_MS)))
    return pc.cast(pc.cast(pc.cast(days, pa.int32()), pa.date32()), pa.string())


def split_by_date(
    batch: pa.RecordBatch | pa.Table,
) -> list[tuple[str, pa.RecordBatch | pa.Table]]:
    """*batch* cut into one batch per partition date, in date order."""
    if batch.num_rows == 0:
        return []
    dates = call_dates(batch)
    values = sorted(pc.unique(dates).to_pylist())
    if len(values) == 1:
        return [(values[0], batch)]
    return [(value, batch.filter(pc.equal(dates, value))) for value in values]


class PartitionedWriter(PartWriter):
    """A :class:`PartWriter` that files each row under ``call_date=<date>/``.

    One part per date present in a batch; part numbers stay unique across folders, and
    every part is still published atomically (hidden temp name, fsync, rename).
    """

    def write(self, batch: pa.RecordBatch | pa.Table, subdir: str | None = None) -> Path:
        last: Path | None = None
        for value, rows in split_by_date(batch):
            folder = f"{PARTITION_COLUMN}={value}"
            if subdir is not None:
                folder = os.path.join(subdir, folder)
            last = super().write(rows, folder)
        return last if last is not None else self.directory


def open_writer(config: AuditConfig, run_id: str) -> PartWriter:
    """The writer *config* asks for: flat parts, or date partitions."""
    if config.partition_by == "date":
        return PartitionedWriter(config.output, run_id)
    return PartWriter(config.output, run_id)
