"""Normalisation of callState bodies into the Arrow schema, field by field."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from auditor.records import SCHEMA, STATUS_INVALID_ID, STATUS_OK, Outcome, build_batch

FULL_BODY = {
    "applicationId": "04e88489-df02-4e34-a0ee-27a91849555f",
    "accountId": "9900000",
    "callId": "c-15ac29a2-1331029c-2cb0-4a07-b215-b22865662d85",
    "parentCallId": "c-25ac29a2-1331029c-2cb0-4a07-b215-b22865662d85",
    "to": "+19195551234",
    "from": "sip:alice@example.com",
    "direction": "inbound",
    "state": "disconnected",
    "stirShaken": {
        "verstat": "Tn-Validation-Passed",
        "attestationIndicator": "A",
        "originatingId": "abc123",
        "futureKey": "kept",
    },
    "identity": "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiJ9...",
    "enqueuedTime": None,
    "startTime": "2022-06-16T13:15:07.160Z",
    "answerTime": "2022-06-16T13:15:18.126Z",
    "endTime": "2022-06-16T13:15:18.314Z",
    "disconnectCause": "hangup",
    "errorMessage": None,
    "errorId": None,
    "lastUpdate": "2022-06-16T13:15:18.314Z",
    "someNewField": {"nested": True},
}


def _ms(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _row(body: dict[str, object] | None, status: str = STATUS_OK) -> dict[str, object]:
    outcome = Outcome(str(FULL_BODY["callId"]), status, 200, 1, 1_700_000_000.5, None, body)
    batch = build_batch([outcome], "run-1")
    assert batch.schema.equals(SCHEMA)
    return batch.to_pylist()[0]


def test_every_field_lands_in_its_column() -> None:
    row = _row(FULL_BODY)
    assert row["call_id"] == FULL_BODY["callId"]
    assert row["parent_call_id"] == FULL_BODY["parentCallId"]
    assert row["account_id"] == "9900000"
    assert row["application_id"] == FULL_BODY["applicationId"]
    assert row["to"] == "+19195551234"
    assert row["from"] == "sip:alice@example.com"
    assert row["direction"] == "inbound"
    assert row["state"] == "disconnected"
    assert row["start_time"] == _ms("2022-06-16T13:15:07.160Z")
    assert row["answer_time"] == _ms("2022-06-16T13:15:18.126Z")
    assert row["end_time"] == _ms("2022-06-16T13:15:18.314Z")
    assert row["last_update"] == _ms("2022-06-16T13:15:18.314Z")
    assert row["enqueued_time"] is None
    assert row["disconnect_cause"] == "hangup"
    assert row["stir_shaken_verstat"] == "TN-Validation-Passed"  # spec's odd casing folded
    assert row["stir_shaken_attestation"] == "A"
    assert row["stir_shaken_originating_id"] == "abc123"
    assert dict(row["stir_shaken"]) == FULL_BODY["stirShaken"]  # raw keys, raw spelling
    assert row["identity"] == FULL_BODY["identity"]
    assert row["status"] == "ok" and row["http_status"] == 200 and row["attempts"] == 1
    assert row["fetched_at"] == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    assert row["error"] is None
    assert row["source"] == "get" and row["audit_run"] == "run-1"


def test_open_enums_keep_unknown_values() -> None:
    body = dict(
        FULL_BODY,
        state="transferring",
        disconnectCause="carrier-exploded",
        direction="sideways",
        stirShaken={"verstat": "No-TN-Validation"},
    )
    row = _row(body)
    assert (row["state"], row["disconnect_cause"], row["direction"]) == (
        "transferring",
        "carrier-exploded",
        "sideways",
    )
    assert row["stir_shaken_verstat"] == "No-TN-Validation"
    assert row["error"] is None


def test_wrong_types_keep_the_row_and_say_why() -> None:
    body = dict(
        FULL_BODY,
        startTime="yesterday-ish",
        to=19195551234,
        stirShaken={"verstat": 7},
        endTime="2022-06-16T13:15:18",
    )  # no offset: ambiguous, not guessed
    row = _row(body)
    assert row["status"] == "ok"
    assert row["start_time"] is None and row["to"] is None and row["end_time"] is None
    assert row["answer_time"] == _ms("2022-06-16T13:15:18.126Z")  # the rest survives
    error = str(row["error"])
    assert "startTime: unparseable timestamp 'yesterday-ish'" in error
    assert "to: expected string, got number" in error
    assert "stirShaken.verstat: expected string, got number" in error
    assert "endTime: unparseable timestamp" in error


def test_microsecond_timestamps_fall_back_to_the_slow_parser() -> None:
    row = _row(dict(FULL_BODY, startTime="2022-06-16T13:15:07.160999Z"))
    assert row["start_time"] == _ms("2022-06-16T13:15:07.160Z")
    assert row["error"] is None


def test_null_and_missing_everything() -> None:
    row = _row({"callId": FULL_BODY["callId"], "stirShaken": None})
    assert row["state"] is None and row["stir_shaken"] is None and row["error"] is None


def test_rows_without_body() -> None:
    outcome = Outcome("bad id", STATUS_INVALID_ID, None, 0, 0.0, "not a Bandwidth call id")
    row = build_batch([outcome]).to_pylist()[0]
    assert row["status"] == "invalid_id" and row["http_status"] is None
    assert row["error"] == "not a Bandwidth call id"


def test_low_cardinality_columns_are_dictionary_encoded() -> None:
    batch = build_batch([Outcome("c-1", STATUS_OK, 200, 1, 0.0, None, FULL_BODY)] * 3)
    for name in (
        "direction",
        "state",
        "disconnect_cause",
        "stir_shaken_verstat",
        "stir_shaken_attestation",
        "status",
    ):
        assert pa.types.is_dictionary(batch.schema.field(name).type), name
    assert batch.schema.field("start_time").type == pa.timestamp("ms", tz="UTC")
