"""What a Bandwidth call id looks like.

An id read from an input file is only ever put into a request path after it matches
:data:`CALL_ID_PATTERN`, so nothing from an input can change the path (no ``/``, ``..``,
``%``, ``?``, ``#``, spaces or non-ASCII).
"""

from __future__ import annotations

import re

MAX_CALL_ID_LENGTH = 128

CALL_ID_PATTERN = re.compile(r"c-[A-Za-z0-9-]{1,126}")


def is_valid_call_id(value: str) -> bool:
    """True when *value* is ``c-`` followed by ASCII letters, digits and dashes (≤128 chars)."""
    return CALL_ID_PATTERN.fullmatch(value) is not None
