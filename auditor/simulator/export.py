"""Write the population's call ids to CSV or Parquet, streaming (O(1) memory)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_BATCH = 65_536


def export_ids(ids: Iterator[str], path: Path) -> int:
    """Write *ids* as column ``callId`` to *path* by its suffix; return the count written.

    The file is written beside its destination and renamed into place, so a reader never
    sees half a file.
    """
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"export path must end in .csv or .parquet: {path}")
    tmp = path.with_name(f".{path.name}.tmp")
    written = 0
    try:
        if suffix == ".csv":
            with tmp.open("w", encoding="ascii", newline="") as out:
                out.write("callId\n")
                while batch := list(itertools.islice(ids, _BATCH)):
                    # Ids are letters, digits and dashes only: no CSV quoting needed.
                    out.write("\n".join(batch))
                    out.write("\n")
                    written += len(batch)
        else:
            schema = pa.schema([pa.field("callId", pa.string(), nullable=False)])
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                while batch := list(itertools.islice(ids, _BATCH)):
                    column = pa.array(batch, pa.string())
                    writer.write_batch(pa.record_batch([column], schema=schema))
                    written += len(batch)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written
