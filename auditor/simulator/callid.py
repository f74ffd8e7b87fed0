"""Call ids that encode their own index, so the population needs no lookup table.

Layout, like Bandwidth's ``c-15ac29a2-1331029c-2cb0-4a07-b215-b22865662d85``
(``c-`` + 8 hex + a version-4 UUID)::

    c-TTTTTTTT-SSSSSSSS-SSSS-4TTT-vTTT-TTTTTTTTTTTT

``S`` (48 bits) is the index, scrambled by an invertible affine map mod 2**48 so that
neighbouring calls do not share digits. ``T`` (104 bits) is a checksum keyed by the
seed: ``index_of`` recomputes the whole id and compares, so a random, garbled or
other-seed id is unknown. ``v`` is the UUID variant nibble (8, 9, a or b).
"""

from __future__ import annotations

from auditor.callids import is_valid_call_id
from auditor.simulator.rand import derive_key, hex_digest

_BITS = 48
_MASK = (1 << _BITS) - 1
_MULT = 0x9E3779B97F4B  # odd, so invertible mod 2**48
_MULT_INV = pow(_MULT, -1, 1 << _BITS)
CALL_ID_LENGTH = 47


class CallIdCodec:
    """Encode an index as a call id and decode it back, for one seed and population size."""

    __slots__ = ("_calls", "_key", "_xor")

    def __init__(self, seed: int, calls: int) -> None:
        self._key = derive_key(seed, "call-id")
        self._xor = int(hex_digest(self._key, b"xor", 6), 16)
        self._calls = calls

    def encode(self, index: int) -> str:
        scrambled = ((index * _MULT) & _MASK) ^ self._xor
        return self._format(f"{scrambled:012x}")

    def _format(self, s: str) -> str:
        t = hex_digest(self._key, s.encode(), 14)
        variant = "89ab"[int(t[11], 16) & 3]
        return f"c-{t[0:8]}-{s[0:8]}-{s[8:12]}-4{t[8:11]}-{variant}{t[12:15]}-{t[15:27]}"

    def decode(self, call_id: str) -> int | None:
        """The index *call_id* encodes, or None when it is not one of this population's."""
        if len(call_id) != CALL_ID_LENGTH or not is_valid_call_id(call_id):
            return None
        s = call_id[11:19] + call_id[20:24]
        try:
            scrambled = int(s, 16)
        except ValueError:
            return None
        index = ((scrambled ^ self._xor) * _MULT_INV) & _MASK
        if index >= self._calls:
            return None
        # Lowercase hex only: int() accepted "A", the exact comparison below does not.
        if self._format(s) != call_id:
            return None
        return index
