"""Compare an output dataset with the simulator's truth, row by row and field by field.

Used by ``auditor demo`` to show that what was written is what the service holds, and by
the tests and benchmarks as their correctness oracle.  The expected row for an id is the
simulator's body for it, normalised by the same :func:`~auditor.records.build_batch`;
the normalisation itself has its own field-by-field tests.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor import sink
from auditor.records import COLUMNS, STATUS_OK, Outcome, build_batch
from auditor.simulator import Population

# Columns that describe the fetch rather than the call.
_FETCH_COLUMNS = frozenset(
    {"status", "http_status", "attempts", "fetched_at", "error", "source", "audit_run"}
)
DATA_COLUMNS = tuple(name for name, _, _ in COLUMNS if name not in _FETCH_COLUMNS)


@dataclass
class Verification:
    rows: int = 0
    ok_rows: int = 0
    duplicates: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    status_counts: Counter[str] = field(default_factory=Counter)

    @property
    def clean(self) -> bool:
        return not self.duplicates and not self.mismatches


def verify_dataset(directory: Path, population: Population) -> Verification:
    table = sink.read_dataset(directory)
    result = Verification(rows=table.num_rows)
    ids = table.column("call_id").to_pylist()
    counts = Counter(ids)
    result.duplicates = sorted(call_id for call_id, n in counts.items() if n > 1)
    statuses = table.column("status").to_pylist()
    result.status_counts.update(statuses)
    ok_index = [i for i, status in enumerate(statuses) if status == STATUS_OK]
    result.ok_rows = len(ok_index)
    if not ok_index:
        return result
    ok_rows = table.take(ok_index).select(list(DATA_COLUMNS)).to_pylist()
    expected_outcomes = [
        Outcome(
            row["call_id"], STATUS_OK, 200, 1, time.time(), None, population.body(row["call_id"])
        )
        for row in ok_rows
    ]
    expected = build_batch(expected_outcomes).select(list(DATA_COLUMNS)).to_pylist()
    for got, want in zip(ok_rows, expected, strict=True):
        if _normal(got) != _normal(want):
            diff = [k for k in DATA_COLUMNS if _normal_value(got[k]) != _normal_value(want[k])]
            result.mismatches.append(f"{got['call_id']}: {', '.join(diff)}")
    return result


def _normal(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _normal_value(v) for k, v in row.items()}


def _normal_value(value: Any) -> Any:
    if isinstance(value, list):  # map<string,string> comes back as a list of pairs
        return sorted(value)
    return value
