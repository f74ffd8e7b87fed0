"""List Calls: query parsing, opaque page tokens, and the page scan.

Results come in creation order (oldest first), as the spec says. Because creation time is
monotone in the index, the scan starts and stops at binary-searched indices: the 7-day
retention edge, ``minStartTime``/``maxStartTime``, and the visibility edge. Only the
filters that cannot be searched (``to``, ``from``, ``disconnectCause``) are tested call by
call. A page token is just (next index, results served so far, a fingerprint of the
filters), authenticated with a keyed hash so garbage or a token reused with other filters
is a 400.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from auditor.simulator.calls import LIFETIME_MAX_MS, QUEUE_MAX_MS, RETENTION_MS, CallFacts
from auditor.simulator.population import Population
from auditor.simulator.timefmt import parse_ms

MAX_RESULTS = 10_000  # per query, across all pages
MAX_PAGE_SIZE = 10_000
DEFAULT_PAGE_SIZE = 1_000
_TOKEN = struct.Struct(">QI8s")
_FILTERS = ("to", "from", "minStartTime", "maxStartTime", "disconnectCause")


class ListError(ValueError):
    """A bad List Calls request: answered 400 with this description."""


@dataclass(frozen=True, slots=True)
class ListQuery:
    to: str | None
    from_: str | None
    min_start_ms: int | None
    max_start_ms: int | None
    cause: str | None
    page_size: int
    cursor: int  # first index not yet examined
    served: int  # results returned by earlier pages of this query
    fingerprint: bytes  # of the filters, binds page tokens to them


@dataclass(frozen=True, slots=True)
class Page:
    calls: list[CallFacts]
    next_token: str | None  # None: this was the last page


def parse_query(params: Mapping[str, str], key: bytes) -> ListQuery:
    """Validate List Calls parameters; raise :class:`ListError` like Bandwidth's 400."""
    raw_size = params.get("pageSize")
    if raw_size is None:
        page_size = DEFAULT_PAGE_SIZE
    else:
        try:
            page_size = int(raw_size)
        except ValueError:
            page_size = 0
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ListError(f"pageSize must be an integer between 1 and {MAX_PAGE_SIZE}")
    times: dict[str, int | None] = {}
    for name in ("minStartTime", "maxStartTime"):
        text = params.get(name)
        value = None if text is None else parse_ms(text)
        if text is not None and value is None:
            raise ListError(f"{name} must be an ISO 8601 date-time")
        times[name] = value
    fingerprint = hashlib.blake2b(
        "\x00".join(f"{n}={params.get(n, chr(1))}" for n in _FILTERS).encode(),
        key=key, digest_size=8,
    ).digest()
    cursor, served = 0, 0
    token = params.get("pageToken")
    if token is not None:
        cursor, served = _decode_token(token, key, fingerprint)
    return ListQuery(
        to=params.get("to"), from_=params.get("from"),
        min_start_ms=times["minStartTime"], max_start_ms=times["maxStartTime"],
        cause=params.get("disconnectCause"), page_size=page_size,
        cursor=cursor, served=served, fingerprint=fingerprint,
    )


def list_page(pop: Population, q: ListQuery, now_ms: int, key: bytes) -> Page:
    """The calls on the next page of *q* at *now_ms*, and the token for the one after."""
    timeline = pop.timeline
    # Calls created this long ago have surely ended more than 7 days ago.
    lo = max(q.cursor, timeline.first_at_or_after(now_ms - RETENTION_MS - LIFETIME_MAX_MS))
    hi = timeline.first_after(now_ms - round(pop.config.visibility_delay * 1000))
    if q.min_start_ms is not None:  # startTime >= creation time, by at most the queue wait
        lo = max(lo, timeline.first_at_or_after(q.min_start_ms - QUEUE_MAX_MS))
    if q.max_start_ms is not None:
        hi = min(hi, timeline.first_after(q.max_start_ms))
    want = min(q.page_size, MAX_RESULTS - q.served)
    out: list[CallFacts] = []
    index = lo
    while index < hi and len(out) < want:
        f = pop.facts(index)
        if _matches(pop, f, q, now_ms):
            out.append(f)
        index += 1
    if q.served + len(out) >= MAX_RESULTS:
        return Page(out, None)
    # Look ahead for one more match, so the last page carries no Link (like the service).
    while index < hi and not _matches(pop, pop.facts(index), q, now_ms):
        index += 1
    if index >= hi:
        return Page(out, None)
    return Page(out, _encode_token(index, q.served + len(out), q.fingerprint, key))


def _matches(pop: Population, f: CallFacts, q: ListQuery, now_ms: int) -> bool:
    if not pop.visible_facts(f, now_ms):
        return False
    if q.to is not None and f.to != q.to:
        return False
    if q.from_ is not None and f.from_ != q.from_:
        return False
    if q.cause is not None and f.cause_at(now_ms) != q.cause:
        return False
    if q.min_start_ms is not None or q.max_start_ms is not None:
        if now_ms < f.start_ms:  # still queued: startTime is null, no time filter matches
            return False
        if q.min_start_ms is not None and f.start_ms < q.min_start_ms:
            return False
        if q.max_start_ms is not None and f.start_ms > q.max_start_ms:
            return False
    return True


def _encode_token(cursor: int, served: int, fingerprint: bytes, key: bytes) -> str:
    payload = _TOKEN.pack(cursor, served, fingerprint)
    mac = hashlib.blake2b(payload, key=key, digest_size=8).digest()
    return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()


def _decode_token(token: str, key: bytes, fingerprint: bytes) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == _TOKEN.size + 8:
        payload, mac = raw[:_TOKEN.size], raw[_TOKEN.size:]
        expected = hashlib.blake2b(payload, key=key, digest_size=8).digest()
        cursor, served, fp = _TOKEN.unpack(payload)
        if hmac.compare_digest(mac, expected) and hmac.compare_digest(fp, fingerprint):
            return cursor, served
    raise ListError("Invalid pageToken")
