"""Fetching one call: the retry policy applied on top of the transport.

:func:`fetch_call` turns one valid call id into one :class:`~auditor.records.Outcome`,
spending at most the policy's attempt budget.  It raises only :class:`AuthError`, which ends
the whole run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from auditor.client import AuthError, Response, VoiceClient
from auditor.limits import RateGate
from auditor.records import STATUS_FAILED, STATUS_NOT_FOUND, STATUS_OK, Outcome
from auditor.retry import RetryPolicy, Verdict, classify, parse_retry_after

T = TypeVar("T")


@dataclass
class FetchStats:
    """Counters shared by all workers, for the run summary."""

    requests: int = 0
    throttled: int = 0
    retried: int = 0
    by_http_status: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    #: smoothed seconds per request, for sizing the worker pool (Little's law)
    latency_ewma: float | None = None
    #: workers asleep on a Retry-After or a backoff: the pool adds as many, so that they
    #: do not hold back the requests that may go meanwhile
    sleeping: int = 0

    def observe_latency(self, seconds: float) -> None:
        previous = self.latency_ewma
        self.latency_ewma = seconds if previous is None else previous + 0.05 * (seconds - previous)

    async def sleep(self, seconds: float) -> None:
        self.sleeping += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self.sleeping -= 1


@dataclass(slots=True)
class Settled(Generic[T]):
    """How a request ended once the policy was done with it (auth failures raise instead)."""

    verdict: Verdict  # OK (value is set), NOT_FOUND, or FAIL
    status: int | None
    attempts: int
    value: T | None = None
    error: str | None = None


#: Turns a 200 into a value, or says why not and whether asking again could help.
Decode = Callable[[Response], Awaitable[tuple[T | None, str | None, bool]]]


async def send_with_policy(
    send: Callable[[str], Awaitable[Response]],
    decode: Decode[T],
    client: VoiceClient,
    gate: RateGate,
    policy: RetryPolicy,
    stats: FetchStats,
) -> Settled[T]:
    """Send one API request until it settles: the single retry loop every command uses.

    *send* takes the Authorization header value.  Each attempt first passes the rate
    gate.  429s wait their Retry-After and tell the gate; 5xx, transport errors and broken
    200 bodies back off with full jitter, up to ``max_attempts``; a 401 with an OAuth2 token
    gets one fresh token, then (like 403) raises :class:`AuthError`.
    """
    attempts = failures = throttles = 0
    refreshed_token = False
    while True:
        auth = client.auth_header_now() or await client.auth_header()
        sent_at = gate.admit_now()
        if sent_at is None:
            sent_at = await gate.acquire()
        response = await send(auth)
        stats.observe_latency(time.monotonic() - sent_at)
        attempts += 1
        stats.requests += 1
        status = response.status
        if status is None:
            stats.transport_errors += 1
            verdict, error = Verdict.RETRY, response.error
        else:
            stats.by_http_status[status] = stats.by_http_status.get(status, 0) + 1
            verdict = classify(status)
            # a 404's body says nothing the row needs: not parsed, at thousands a second
            quiet = verdict is Verdict.OK or verdict is Verdict.NOT_FOUND
            error = response.error or (None if quiet else _error_text(response))

        if verdict is Verdict.OK and error is None:
            value, error, retryable = await decode(response)
            if value is not None:
                return Settled(Verdict.OK, status, attempts, value)
            # a broken 200 is usually a transport accident: ask again
            verdict = Verdict.RETRY if retryable else Verdict.FAIL
        elif verdict is Verdict.OK:
            verdict = Verdict.RETRY  # e.g. body over the size cap

        if verdict is Verdict.NOT_FOUND:
            return Settled(Verdict.NOT_FOUND, status, attempts)
        if verdict is Verdict.AUTH:
            if status == 401 and client.tokens is not None and not refreshed_token:
                client.tokens.invalidate(auth)  # revoked early? one fresh token, then give up
                refreshed_token = True
                continue
            raise AuthError(_auth_advice(status, client))
        if verdict is Verdict.THROTTLED:
            stats.throttled += 1
            throttles += 1
            hint = parse_retry_after(response.retry_after, time.time())
            gate.throttled(sent_at, hint)
            if throttles > policy.max_throttled:
                error = f"still throttled after {throttles} 429s"
                return Settled(Verdict.FAIL, status, attempts, error=error)
            await stats.sleep(policy.throttle_wait(hint, throttles))
            continue
        if verdict is Verdict.RETRY:
            failures += 1
            if failures >= policy.max_attempts:
                return Settled(Verdict.FAIL, status, attempts, error=error or "failed")
            stats.retried += 1
            await stats.sleep(policy.backoff(failures))
            continue
        return Settled(Verdict.FAIL, status, attempts, error=error or f"HTTP {status}")


async def fetch_call(
    call_id: str,
    client: VoiceClient,
    gate: RateGate,
    policy: RetryPolicy,
    stats: FetchStats,
) -> Outcome:
    """Get Call State for one valid id, as an ``ok``, ``not_found`` or ``failed`` outcome."""

    async def send(auth: str) -> Response:
        return await client.get_call_state(call_id, auth)

    async def decode(response: Response) -> tuple[bytes | None, str | None, bool]:
        # Checked here (valid JSON, an object, this call's id), but kept encoded until the
        # writer builds the batch: see Outcome.raw.
        body, error = _decode_body(response.body, call_id)
        return (response.body if body is not None else None), error, True

    settled = await send_with_policy(send, decode, client, gate, policy, stats)
    if settled.verdict is Verdict.OK:
        return Outcome(
            call_id, STATUS_OK, settled.status, settled.attempts, time.time(), raw=settled.value
        )
    if settled.verdict is Verdict.NOT_FOUND:
        return Outcome(call_id, STATUS_NOT_FOUND, settled.status, settled.attempts, time.time())
    return _failed(call_id, settled.status, settled.attempts, settled.error)


def _failed(call_id: str, status: int | None, attempts: int, error: str | None) -> Outcome:
    return Outcome(call_id, STATUS_FAILED, status, attempts, time.time(), error or "failed")


def _decode_body(raw: bytes | None, call_id: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        body = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None, "HTTP 200 with a body that is not valid JSON"
    if not isinstance(body, dict):
        return None, "HTTP 200 with a JSON body that is not an object"
    served = body.get("callId")
    if served is not None and served != call_id:
        # Never store another call's data under this id; a mixed-up proxy may recover.
        return None, f"HTTP 200 for a different call ({str(served)[:140]!r})"
    return body, None


def _error_text(response: Response) -> str:
    """ "HTTP 503 system-overloaded: Managing too many..." from Bandwidth's error body."""
    text = f"HTTP {response.status}"
    try:
        body = orjson.loads(response.body or b"")
    except orjson.JSONDecodeError:
        return text
    if isinstance(body, dict):
        kind, description = body.get("type"), body.get("description")
        if isinstance(kind, str) and kind:
            text += f" {kind[:60]}"
        if isinstance(description, str) and description:
            text += f": {description[:200]}"
    return text


def _auth_advice(status: int | None, client: VoiceClient) -> str:
    variables = (
        "BW_CLIENT_ID and BW_CLIENT_SECRET"
        if client.tokens is not None
        else "BW_USERNAME and BW_PASSWORD (legacy Basic auth, retired by Bandwidth on "
        "2026-12-02: prefer BW_CLIENT_ID and BW_CLIENT_SECRET)"
    )
    if status == 403:
        return (
            "the Voice API denied access (HTTP 403): check --account-id / BW_ACCOUNT_ID "
            f"and that {variables} belong to that account"
        )
    return f"the Voice API refused the credentials (HTTP 401): check {variables}"
