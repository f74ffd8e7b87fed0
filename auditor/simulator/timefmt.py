"""Bandwidth's timestamp format: UTC, milliseconds, ``Z`` (``2022-06-16T13:15:07.160Z``)."""

from __future__ import annotations

import datetime as dt
import time

_UTC = dt.UTC


# "YYYY-MM-DDTHH:MM:" by epoch minute. A body's timestamps, and neighbouring calls', share
# minutes, so this saves most strftime calls on the server's hot path. Bounded: cleared
# when full.
_MINUTES: dict[int, str] = {}
_MINUTES_MAX = 8192


def format_ms(epoch_ms: int) -> str:
    """Epoch milliseconds -> ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    minute, rest = divmod(epoch_ms, 60_000)
    prefix = _MINUTES.get(minute)
    if prefix is None:
        if len(_MINUTES) >= _MINUTES_MAX:
            _MINUTES.clear()
        prefix = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minute * 60))
        _MINUTES[minute] = prefix
    seconds, millis = divmod(rest, 1000)
    return f"{prefix}{seconds:02d}.{millis:03d}Z"


def parse_ms(text: str) -> int | None:
    """An ISO 8601 date-time (offset or ``Z``; naive means UTC) -> epoch ms, else None.

    List Calls' ``minStartTime``/``maxStartTime`` accept both ``2022-06-21T19:13:21Z`` and
    the millisecond form; sub-millisecond digits are truncated.
    """
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=_UTC)
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000
