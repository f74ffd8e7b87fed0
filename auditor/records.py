"""The output schema, and turning fetch outcomes into typed Arrow record batches.

Workers produce one :class:`Outcome` per distinct call id.  The writer hands a list of them
to :func:`build_batch`, which normalises the ``callState`` bodies column by column: one
pass over the bodies fills plain Python lists, and the five timestamp columns are parsed by
a single vectorised Arrow cast (with a per-value fallback only when that cast fails).

Normalisation never rejects a body.  Open enums (``state``, ``disconnectCause``, the
``stirShaken`` keys) are kept exactly as they came.  A field of the wrong JSON type or a
timestamp that does not parse becomes null, and the problem is recorded in ``error`` while
``status`` stays ``ok``: the fetch worked, the data was odd, and the analyst sees both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
import pyarrow as pa

SCHEMA_VERSION: Final = "1"

STATUS_OK: Final = "ok"
STATUS_NOT_FOUND: Final = "not_found"
STATUS_INVALID_ID: Final = "invalid_id"
STATUS_FAILED: Final = "failed"
STATUSES: Final = (STATUS_OK, STATUS_NOT_FOUND, STATUS_INVALID_ID, STATUS_FAILED)
SOURCE_GET: Final = "get"
SOURCE_LIST: Final = "list"
#: Statuses a rerun does not fetch again.
FINAL_STATUSES: Final = frozenset({STATUS_OK, STATUS_NOT_FOUND, STATUS_INVALID_ID})

_TS = pa.timestamp("ms", tz="UTC")
_DICT = pa.dictionary(pa.int32(), pa.string())

#: (column, Arrow type, description) in output order.  The README's schema table mirrors it.
COLUMNS: Final[tuple[tuple[str, pa.DataType, str], ...]] = (
    ("call_id", pa.string(), "the call id as requested (trimmed)"),
    ("parent_call_id", pa.string(), "A-leg id, set only on the B-leg of a <Transfer>"),
    ("account_id", pa.string(), "Bandwidth account id"),
    ("application_id", pa.string(), "Bandwidth application id"),
    ("to", pa.string(), "called number (E.164) or SIP URI"),
    ("from", pa.string(), "calling number (E.164) or SIP URI"),
    ("direction", _DICT, "inbound | outbound"),
    ("state", _DICT, "queued | initiated | answered | disconnected | any newer value"),
    ("enqueued_time", _TS, "when an outbound call was queued"),
    ("start_time", _TS, "call start; null while queued"),
    ("answer_time", _TS, "when the call was answered"),
    ("end_time", _TS, "when the call ended"),
    ("last_update", _TS, "last change to the call's state"),
    ("disconnect_cause", _DICT, "hangup, busy, timeout, ... kept as sent, including new values"),
    ("error_message", pa.string(), "set when the call ended in error"),
    ("error_id", pa.string(), "set when the call ended in error"),
    ("stir_shaken_verstat", _DICT, "TN-Validation-Passed | TN-Validation-Failed | other"),
    ("stir_shaken_attestation", _DICT, "A | B | C | other"),
    ("stir_shaken_originating_id", pa.string(), "STIR/SHAKEN originating id"),
    ("stir_shaken", pa.map_(pa.string(), pa.string()), "every stirShaken key, as sent"),
    ("identity", pa.string(), "raw SIP Identity header (PASSporT), inbound only"),
    ("status", _DICT, "ok | not_found | invalid_id | failed: how the fetch went"),
    ("http_status", pa.int16(), "HTTP status of the last response; null if none came"),
    ("attempts", pa.int16(), "HTTP requests made for this id (0 for invalid_id)"),
    ("fetched_at", _TS, "when the final response came"),
    ("error", pa.string(), "why the fetch failed, or what was odd in the body"),
    ("source", _DICT, "get (Get Call State) | list (List Calls)"),
    ("audit_run", pa.string(), "id of the run that wrote the row (UTC start time + random)"),
)

SCHEMA: Final = pa.schema(
    [pa.field(name, type_) for name, type_, _ in COLUMNS],
    metadata={b"auditor.schema_version": SCHEMA_VERSION.encode()},
)

# JSON field -> column, for the plain string fields copied as they are.
_STRING_FIELDS: Final = (
    ("parentCallId", "parent_call_id"),
    ("accountId", "account_id"),
    ("applicationId", "application_id"),
    ("to", "to"),
    ("from", "from"),
    ("direction", "direction"),
    ("state", "state"),
    ("disconnectCause", "disconnect_cause"),
    ("errorMessage", "error_message"),
    ("errorId", "error_id"),
    ("identity", "identity"),
)
_TIME_FIELDS: Final = (
    ("enqueuedTime", "enqueued_time"),
    ("startTime", "start_time"),
    ("answerTime", "answer_time"),
    ("endTime", "end_time"),
    ("lastUpdate", "last_update"),
)
# The spec's own example spells it "Tn-Validation-Passed"; analysts group on one spelling.
_VERSTAT_CANONICAL: Final = {
    "tn-validation-passed": "TN-Validation-Passed",
    "tn-validation-failed": "TN-Validation-Failed",
}


@dataclass(slots=True)
class Outcome:
    """How the fetch of one call id ended; ``body`` is the decoded callState when ``ok``."""

    call_id: str
    status: str
    http_status: int | None
    attempts: int
    fetched_at: float  # epoch seconds
    error: str | None = None
    body: dict[str, Any] | None = None
    source: str = SOURCE_GET
    #: the 200's JSON body, still encoded, when ``body`` is None: the writer holds up to
    #: :data:`BUILD_CHUNK_ROWS` of these before normalising them, and the bytes take a
    #: third of a decoded dict's memory; :func:`build_batch` decodes them a chunk at a time
    raw: bytes | None = None


#: Rows decoded and normalised at a time: bounds the memory of the Python objects made.
#: The pipeline's writer also normalises outcomes this many at a time as they arrive.
BUILD_CHUNK_ROWS: Final = 2048


def build_batch(outcomes: Sequence[Outcome], audit_run: str = "") -> pa.RecordBatch:
    """Normalise *outcomes* into one record batch of :data:`SCHEMA`, stamped *audit_run*."""
    if len(outcomes) <= BUILD_CHUNK_ROWS:
        return _build_chunk(outcomes, audit_run)
    chunks = [
        _build_chunk(outcomes[i : i + BUILD_CHUNK_ROWS], audit_run)
        for i in range(0, len(outcomes), BUILD_CHUNK_ROWS)
    ]
    # One batch again: the chunks' dictionaries are merged, and each column made whole.
    table = pa.Table.from_batches(chunks, schema=SCHEMA).unify_dictionaries().combine_chunks()
    (batch,) = table.to_batches()
    return batch


def _build_chunk(outcomes: Sequence[Outcome], audit_run: str) -> pa.RecordBatch:
    n = len(outcomes)
    cols: dict[str, list[Any]] = {name: [None] * n for name, _, _ in COLUMNS}
    times: dict[str, list[Any]] = {column: [None] * n for _, column in _TIME_FIELDS}
    problems: list[list[str] | None] = [None] * n

    for i, outcome in enumerate(outcomes):
        cols["call_id"][i] = outcome.call_id
        cols["status"][i] = outcome.status
        cols["http_status"][i] = outcome.http_status
        cols["attempts"][i] = outcome.attempts
        cols["fetched_at"][i] = int(outcome.fetched_at * 1000)
        cols["source"][i] = outcome.source
        if outcome.error is not None:
            problems[i] = [outcome.error]
        body = outcome.body
        if body is None:
            if outcome.raw is None:
                continue
            body = orjson.loads(outcome.raw)  # checked to be a JSON object when fetched
        for field, column in _STRING_FIELDS:
            value = body.get(field)
            if value is None or type(value) is str:
                cols[column][i] = value
            else:
                _note(problems, i, f"{field}: expected string, got {_json_type(value)}")
        for field, column in _TIME_FIELDS:
            value = body.get(field)
            if value is None or type(value) is str:
                times[column][i] = value
            else:
                _note(problems, i, f"{field}: expected timestamp string, got {_json_type(value)}")
        _stir_shaken(body.get("stirShaken"), i, cols, problems)

    arrays: list[pa.Array] = []
    for name, type_, _ in COLUMNS:
        if name in times:
            arrays.append(_timestamps(name, times[name], problems))
        elif name == "fetched_at":
            arrays.append(pa.array(cols[name], pa.int64()).cast(_TS))
        elif name == "audit_run":
            arrays.append(pa.array([audit_run] * n, pa.string()))
        elif name == "error":
            errors = [None if p is None else "; ".join(p) for p in problems]
            arrays.append(pa.array(errors, pa.string()))
        elif pa.types.is_dictionary(type_):
            arrays.append(pa.array(cols[name], pa.string()).dictionary_encode())
        else:
            arrays.append(pa.array(cols[name], type_))
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def empty_table() -> pa.Table:
    return SCHEMA.empty_table()


def _stir_shaken(
    value: object, i: int, cols: dict[str, list[Any]], problems: list[list[str] | None]
) -> None:
    if value is None:
        return
    if type(value) is not dict:
        _note(problems, i, f"stirShaken: expected object, got {_json_type(value)}")
        return
    pairs = []
    for key, item in value.items():
        if item is None or type(item) is str:
            pairs.append((key, item))
        else:
            _note(problems, i, f"stirShaken.{key}: expected string, got {_json_type(item)}")
    cols["stir_shaken"][i] = pairs
    verstat = value.get("verstat")
    if type(verstat) is str:
        cols["stir_shaken_verstat"][i] = _VERSTAT_CANONICAL.get(verstat.lower(), verstat)
    attestation = value.get("attestationIndicator")
    if type(attestation) is str:
        cols["stir_shaken_attestation"][i] = attestation
    originating = value.get("originatingId")
    if type(originating) is str:
        cols["stir_shaken_originating_id"][i] = originating


def _timestamps(column: str, values: list[Any], problems: list[list[str] | None]) -> pa.Array:
    """Parse RFC 3339 strings in one cast; fall back value by value only if that fails."""
    try:
        return pa.array(values, pa.string()).cast(_TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    parsed: list[int | None] = []
    for i, value in enumerate(values):
        millis = None if value is None else _parse_timestamp_ms(value)
        if value is not None and millis is None:
            _note(problems, i, f"{_FIELD_OF[column]}: unparseable timestamp {value[:64]!r}")
        parsed.append(millis)
    return pa.array(parsed, pa.int64()).cast(_TS)


_FIELD_OF: Final = {column: field for field, column in _TIME_FIELDS}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _parse_timestamp_ms(value: str) -> int | None:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # a time without an offset is ambiguous, so it is not guessed
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _note(problems: list[list[str] | None], i: int, problem: str) -> None:
    existing = problems[i]
    if existing is None:
        problems[i] = [problem]
    else:
        existing.append(problem)


def _json_type(value: object) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )
