"""Retry policy: which answers are worth another try, and how long to wait first.

Pure functions and one frozen dataclass; nothing here does I/O, so every rule can be tested
without a server.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import Enum


class Verdict(Enum):
    OK = "ok"
    NOT_FOUND = "not_found"
    THROTTLED = "throttled"  # 429: wait at least Retry-After, then retry
    RETRY = "retry"  # transient: backoff with full jitter, then retry
    FAIL = "fail"  # will not get better by asking again
    AUTH = "auth"  # 401/403: the whole run stops


RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})


def classify(http_status: int) -> Verdict:
    """Map an HTTP status of Get Call State to what the worker does next."""
    if http_status == 200:
        return Verdict.OK
    if http_status == 404:
        return Verdict.NOT_FOUND
    if http_status == 429:
        return Verdict.THROTTLED
    if http_status in RETRYABLE_STATUSES:
        return Verdict.RETRY
    if http_status in (401, 403):
        return Verdict.AUTH
    return Verdict.FAIL


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times to ask, and how long to wait between asks.

    ``max_attempts`` bounds the requests spent on transient failures (5xx, timeouts, broken
    connections and bodies).  429s are the server pacing us rather than failing, so they
    draw on their own, larger budget ``max_throttled``; each waits at least Retry-After.
    """

    max_attempts: int = 6
    max_throttled: int = 30
    base_delay: float = 0.25
    max_delay: float = 10.0
    #: Retry-After values above this are treated as this: a server asking for an hour would
    #: stall a nightly run, and asking again sooner costs one more 429 at worst.
    max_retry_after: float = 120.0

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        """Full-jitter exponential backoff before retry number *failures* (1-based).

        Uniform in ``[0, min(max_delay, base_delay * 2**(failures-1))]``: clients that failed
        together spread out instead of retrying in lockstep (AWS "full jitter").
        """
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(failures - 1, 30))
        return (rng or random).uniform(0.0, ceiling)

    def throttle_wait(self, retry_after: float | None, failures: int) -> float:
        """Wait after a 429: Retry-After when given, else a backoff; never more than the cap."""
        if retry_after is None:
            return self.backoff(failures) + self.base_delay
        return min(retry_after, self.max_retry_after)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110).

    Returns None for "no usable hint": a missing header, 0, a negative number, a date in
    the past, or anything that does not parse.  Capping is the policy's job.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(int(text))
        return seconds if seconds > 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    delay = when.timestamp() - now
    return delay if delay > 0 else None
