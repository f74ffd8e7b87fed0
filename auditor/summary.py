"""``auditor summary DIR``: what a dataset holds and what its runs did."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.compute as pc

from auditor import sink
from auditor.dataset import read_latest
from auditor.sink import OutputError


def describe_dataset(directory: Path) -> str:
    if not directory.is_dir():
        raise OutputError(f"{directory}: not an output directory")
    columns = ["call_id", "status", "disconnect_cause", "stir_shaken_verstat", "state"]
    rows = sink.read_dataset(directory, ["call_id"]).num_rows
    table = read_latest(directory, columns)  # counts are of calls: newest row each
    parts = len(list(sink.iter_parts(directory)))
    lines = [
        f"dataset {directory}: {table.num_rows} calls "
        f"({rows} rows with history) in {parts} part files"
    ]
    for column in ("status", "state", "disconnect_cause", "stir_shaken_verstat"):
        counts = Counter[str]()
        for chunk in table.column(column).chunks:
            for item in pc.value_counts(chunk.cast("string")).to_pylist():
                counts[str(item["values"])] += item["counts"]
        text = ", ".join(f"{k}={v}" for k, v in counts.most_common())
        lines.append(f"  {column}: {text or '-'}")
    runs = sink.read_run_summaries(directory)
    lines.append(f"runs: {len(runs)}")
    for run in runs[-5:]:
        lines.append(
            f"  {run['run_id']}: {run['rows_written']} rows, {run['requests']} requests, "
            f"{run['elapsed_seconds']} s, {run['achieved_rate']} req/s, exit {run['exit_code']}"
            + (f", stopped: {run['stopped']}" if run.get("stopped") else "")
        )
    return "\n".join(lines)
