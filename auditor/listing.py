"""List Calls: every call that started in a time window, in as few requests as possible.

``GET /accounts/{accountId}/calls`` returns whole ``callState`` bodies, oldest first, at
most 10,000 per query however it is paged.  :func:`sweep` covers a window of start times:

* Each query asks for ``pageSize=10000`` and follows ``Link: <url>; rel="next"`` exactly
  as given (the URL is used byte for byte; only a URL on the API's own origin is followed,
  so credentials never go elsewhere).
* A query that returns 10,000 calls may have been cut off, so its rows are set aside and
  its window is split.  ``minStartTime`` and ``maxStartTime`` are both inclusive, at
  millisecond resolution, so a window ``[a, b]`` splits into ``[a, m]`` and ``[m+1ms, b]``:
  the pieces never overlap and no call is counted twice.  Only a window whose query
  returned fewer than 10,000 calls counts as complete, whatever order the service lists in.
* Where to split is learnt from the capped answer itself (see :func:`split_window`): the
  10,000 start times returned show where the calls are dense, so a day with a burst of
  10,000 calls in one minute costs a handful of requests rather than a bisection down to
  that minute.  The request count stays close to the minimum of calls / 10,000.
* Every request passes the job's shared :class:`~auditor.limits.RateGate` and token, and
  the same retry policy as Get Call State: 429 waits Retry-After and slows the shared
  rate, 5xx / timeouts / cut-off bodies back off with full jitter up to the attempt
  budget, 401/403 stop the job (:class:`~auditor.client.AuthError`).  A window whose
  query still fails is reported in :attr:`ListStats.failed`, never silently skipped.

Calls still queued have no ``startTime`` and match no start-time filter: they are listed
by a later sweep once they start (``auditor nightly`` re-lists an overlap for this).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import orjson
import yarl

from auditor.callids import is_valid_call_id
from auditor.client import Response
from auditor.config import ConfigError
from auditor.connection import Connection
from auditor.fetch import send_with_policy
from auditor.records import SOURCE_LIST, STATUS_OK, Outcome

#: The service returns at most this many calls per query, across all its pages.
LIST_CAP: Final = 10_000
PAGE_SIZE: Final = 10_000
#: A page of 10,000 bodies is ~10-25 MB; this only guards against a runaway response.
LIST_MAX_BODY: Final = 256 << 20
#: Windows queried at once.  Each holds up to a page of bodies in memory.
LIST_PARALLEL: Final = 2
#: After a capped query, the part of the window holding this share of the returned calls
#: is queried again on its own; the rest is cut into pieces of growing length, the first
#: expected to hold SPLIT_TARGET calls (see :func:`split_window`).
LEFT_SHARE: Final = 0.9
SPLIT_TARGET: Final = 7_500
_MAX_PAGES: Final = LIST_CAP + 1
SECOND_MS: Final = 1000
DAY_MS: Final = 86_400_000

_LINK_NEXT = re.compile(r"<([^>]*)>\s*((?:;[^,<]*)*)")
_REL_NEXT = re.compile(r';\s*rel\s*=\s*"?([^";]*)"?', re.IGNORECASE)


# -- windows and time -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """Start times ``start_ms`` to ``end_ms``, both inclusive, epoch milliseconds."""

    start_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        if self.end_ms < self.start_ms:
            raise ValueError(f"empty window {self.start_ms}..{self.end_ms}")

    def __str__(self) -> str:
        return f"{format_ms(self.start_ms)}..{format_ms(self.end_ms)}"


def format_ms(epoch_ms: int) -> str:
    """Epoch ms as Bandwidth writes times: ``2022-06-16T13:15:07.160Z``."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def parse_timestamp(text: str, flag: str) -> int:
    """``2026-06-09``, ``2026-06-09T10:00Z``, ``...+02:00``... as epoch ms (naive = UTC)."""
    value = text.strip()
    if value.endswith(("z", "Z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{flag}: expected an ISO 8601 time such as 2026-06-09T00:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp() * 1000)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, flag: str) -> float:
    """``90s``, ``15m``, ``24h``, ``7d``, ``1w`` or plain seconds, as seconds (> 0)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"{flag}: expected a duration such as 24h, 90m or 7d, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def _start_ms(body: dict[str, Any]) -> int | None:
    value = body.get("startTime")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return math.floor(moment.timestamp() * 1000)


# -- queries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListFilters:
    """List Calls' optional filters, sent on every query of a sweep."""

    to: str | None = None
    from_: str | None = None
    disconnect_cause: str | None = None

    def params(self) -> list[tuple[str, str]]:
        pairs = (("to", self.to), ("from", self.from_), ("disconnectCause", self.disconnect_cause))
        return [(name, value) for name, value in pairs if value is not None]


def query_url(
    list_url: str, window: Window, filters: ListFilters, page_size: int = PAGE_SIZE
) -> yarl.URL:
    """The first page's URL, every value percent-encoded (``+1...`` becomes ``%2B1...``)."""
    params = [
        ("minStartTime", format_ms(window.start_ms)),
        ("maxStartTime", format_ms(window.end_ms)),
        *filters.params(),
        ("pageSize", str(page_size)),
    ]
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    return yarl.URL(f"{list_url}?{query}", encoded=True)


def next_link(header: str | None, current: yarl.URL) -> yarl.URL | None:
    """The ``rel="next"`` target of a Link header, as given (relative ones resolved).

    Raises ValueError for a next link to another origin: the request would carry the
    account's credentials there.
    """
    if not header:
        return None
    for match in _LINK_NEXT.finditer(header):
        rels = " ".join(m.group(1) for m in _REL_NEXT.finditer(match.group(2)))
        if "next" not in rels.lower().split():
            continue
        target = yarl.URL(match.group(1).strip(), encoded=True)
        if not target.is_absolute():
            target = current.join(target)
        if target.origin() != current.origin():
            raise ValueError("List Calls sent a next-page link to another host; not followed")
        return target
    return None


@dataclass
class PageReply:
    bodies: list[Any] | None  # None: the page could not be fetched (see error)
    next_url: yarl.URL | None = None
    attempts: int = 0
    fetched_at: float = 0.0
    error: str | None = None
    retryable: bool = True  # for a failed decode: would asking again help?


async def fetch_page(conn: Connection, url: yarl.URL, seconds: float) -> PageReply:
    """One List Calls page under the job's retry policy (the same loop as Get Call State)."""
    client = conn.client

    async def send(auth: str) -> Response:
        return await client.get_list_page(url, auth, LIST_MAX_BODY, seconds)

    async def decode(response: Response) -> tuple[PageReply | None, str | None, bool]:
        reply = await _decode_page(response, url)
        return (reply if reply.bodies is not None else None), reply.error, reply.retryable

    settled = await send_with_policy(send, decode, client, conn.gate, conn.policy, conn.stats)
    if settled.value is not None:
        reply = settled.value
        reply.attempts, reply.fetched_at = settled.attempts, time.time()
        return reply
    # 404 and other answers that asking again will not change, or a spent budget
    error = settled.error or f"HTTP {settled.status}"
    return PageReply(None, None, settled.attempts, time.time(), error)


async def _decode_page(response: Response, url: yarl.URL) -> PageReply:
    raw = response.body or b""
    try:
        if len(raw) > 1 << 20:  # megabytes of JSON: parse off the event loop
            bodies = await asyncio.to_thread(orjson.loads, raw)
        else:
            bodies = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return PageReply(None, error="HTTP 200 with a body that is not valid JSON")
    if not isinstance(bodies, list):
        return PageReply(None, error="HTTP 200 with a JSON body that is not an array")
    try:
        return PageReply(bodies, next_link(response.link, url))
    except ValueError as exc:
        return PageReply(None, error=str(exc), retryable=False)


# -- the sweep --------------------------------------------------------------------------------


@dataclass
class ListStats:
    """What a sweep did; part of the discover and nightly summaries."""

    queries: int = 0  # window queries (each one or more pages)
    pages: int = 0
    requests: int = 0  # HTTP requests, retries included
    capped: int = 0  # queries that hit the 10,000 cap, so their window was split
    complete: int = 0  # windows whose every call was listed
    listed: int = 0  # calls returned by complete windows
    malformed: int = 0  # entries without a usable callId (counted, not stored)
    failed: list[str] = field(default_factory=list)  # "window: error"
    failed_windows: list[Window] = field(default_factory=list)
    stopped: bool = False

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["failed_windows"] = [str(w) for w in self.failed_windows]
        return data


@dataclass
class _Capped:
    window: Window
    starts: list[int]


@dataclass
class _Failed:
    window: Window
    error: str


@dataclass
class _Complete:
    window: Window
    outcomes: list[Outcome]
    malformed: int = 0


OnWindow = Callable[[Window, list[Outcome]], Awaitable[None]]


async def sweep(
    conn: Connection,
    window: Window,
    on_window: OnWindow,
    filters: ListFilters | None = None,
    *,
    stop: asyncio.Event | None = None,
    stats: ListStats | None = None,
    parallel: int = LIST_PARALLEL,
    page_seconds: float = 120.0,
    page_size: int = PAGE_SIZE,
) -> ListStats:
    """List every call that started in *window*; ``await on_window(w, rows)`` per piece.

    *on_window* receives each complete piece's calls as ``ok`` outcomes with
    ``source = "list"`` (pieces never overlap; the same call can still come twice if the
    service lists it in two pieces, so callers deduplicate by ``call_id``).  Capped
    answers are never passed on.  When *stop* is set, no new query starts and the ones
    running are abandoned (their pieces are simply not delivered).  *page_size* below
    10,000 only adds requests (the cap is per query, across pages); it exists for tests
    and for services that page smaller.
    """
    stats = stats if stats is not None else ListStats()
    filters = filters or ListFilters()
    todo: list[Window] = [window]
    running: set[asyncio.Task[_Capped | _Failed | _Complete]] = set()
    stop_wait = asyncio.create_task((stop or asyncio.Event()).wait())
    try:
        while todo or running:
            while todo and len(running) < parallel and not stop_wait.done():
                piece = todo.pop(0)
                running.add(
                    asyncio.create_task(
                        _query(conn, piece, filters, stats, page_seconds, page_size)
                    )
                )
            if stop_wait.done():
                stats.stopped = True
                break
            done, _ = await asyncio.wait({*running, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            finished = running & done
            running -= finished
            for task in finished:
                result = task.result()
                if isinstance(result, _Complete):
                    stats.complete += 1
                    stats.listed += len(result.outcomes)
                    stats.malformed += result.malformed
                    await on_window(result.window, result.outcomes)
                elif isinstance(result, _Capped):
                    stats.capped += 1
                    pieces = split_window(result.window, result.starts)
                    if pieces:
                        todo[:0] = pieces  # depth first: finish one region before the next
                    else:
                        _fail(stats, result.window, "over 10,000 calls in one millisecond")
                else:
                    _fail(stats, result.window, result.error)
    finally:
        stop_wait.cancel()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    return stats


def _fail(stats: ListStats, window: Window, error: str) -> None:
    stats.failed_windows.append(window)
    stats.failed.append(f"{window}: {error}")


async def _query(
    conn: Connection,
    window: Window,
    filters: ListFilters,
    stats: ListStats,
    seconds: float,
    page_size: int,
) -> _Capped | _Failed | _Complete:
    """All pages of one window's query; capped or complete, or failed after retries."""
    stats.queries += 1
    url: yarl.URL | None = query_url(conn.client.list_url, window, filters, page_size)
    seen: set[str] = set()
    outcomes: list[Outcome] = []
    starts: list[int] = []
    returned = malformed = 0
    while url is not None:
        if str(url) in seen or len(seen) >= _MAX_PAGES:
            return _Failed(window, "List Calls paging does not end (a next link repeats)")
        seen.add(str(url))
        reply = await fetch_page(conn, url, seconds)
        stats.requests += reply.attempts
        if reply.bodies is None:
            return _Failed(window, reply.error or "failed")
        stats.pages += 1
        returned += len(reply.bodies)
        for body in reply.bodies:
            call_id = body.get("callId") if isinstance(body, dict) else None
            if not isinstance(call_id, str) or not is_valid_call_id(call_id):
                malformed += 1
                continue
            assert isinstance(body, dict)
            outcomes.append(
                Outcome(
                    call_id,
                    STATUS_OK,
                    200,
                    reply.attempts,
                    reply.fetched_at,
                    None,
                    body,
                    SOURCE_LIST,
                )
            )
            start = _start_ms(body)
            if start is not None and window.start_ms <= start <= window.end_ms:
                starts.append(start)
        if returned >= LIST_CAP:
            starts.sort()
            return _Capped(window, starts)
        url = reply.next_url
    return _Complete(window, outcomes, malformed)


def split_window(window: Window, starts: list[int]) -> list[Window]:
    """Disjoint pieces covering *window*, after its query returned the capped *starts*.

    *starts* are the sorted start times (inside the window) of the calls the capped query
    returned.  The service lists oldest first, so they are normally the window's earliest
    calls, and ``[start, m]`` with ``m`` the start of the returned call at LEFT_SHARE
    holds about that many calls: it is queried again on its own.  The rest is cut into
    pieces of growing length: the first long enough to hold SPLIT_TARGET calls at the
    density just seen, each next one twice as long.  At a steady density the first piece
    is complete and the later ones split again, now with an accurate density, so the
    request count stays near calls / 10,000; after a burst (a density the rest of the
    window does not have) the doubling reaches the window's end in a few pieces instead
    of thousands.  If the service lists in another order the estimates are off, but
    every piece is strictly smaller than *window*, so splitting always ends.  Returns []
    when the window is one millisecond wide and cannot be split.
    """
    a, b = window.start_ms, window.end_ms
    if a == b:
        return []
    m = starts[max(0, int(len(starts) * LEFT_SHARE) - 1)] if starts else a + (b - a) // 2
    if not a <= m < b:
        m = a + (b - a) // 2
    pieces = [Window(a, m)]
    sampled = sum(1 for start in starts if start <= m)
    step = max(1, (SPLIT_TARGET * (m - a + 1)) // sampled) if sampled else b - m
    low = m + 1
    while low <= b:
        high = min(b, low + step - 1)
        pieces.append(Window(low, high))
        low, step = high + 1, step * 2
    return pieces
