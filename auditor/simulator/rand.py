"""Deterministic randomness: every draw is a keyed hash, never a stateful RNG.

A stateful RNG would make a call's attributes (or a request's fault) depend on what was
drawn before it; a keyed hash of ``(purpose, seed, index)`` gives the same answer in any
order, in O(1), with no table.
"""

from __future__ import annotations

import hashlib
import struct

_UNITS_64 = struct.Struct(">32H")
_U16 = 65536.0


def derive_key(seed: int, purpose: str) -> bytes:
    """A 32-byte blake2b key, distinct for each (seed, purpose)."""
    return hashlib.blake2b(f"auditor-sim/{purpose}/{seed}".encode(), digest_size=32).digest()


def units(key: bytes, data: bytes) -> tuple[int, ...]:
    """32 independent 16-bit values (0..65535) for *data* under *key*."""
    digest = hashlib.blake2b(data, key=key, digest_size=64).digest()
    return _UNITS_64.unpack(digest)


def unit(value: int) -> float:
    """Map a 16-bit value to the open interval (0, 1): safe for inverse CDFs."""
    return (value + 0.5) / _U16


def uniform64(key: bytes, data: bytes) -> float:
    """One uniform in [0, 1) with 53-bit resolution."""
    digest = hashlib.blake2b(data, key=key, digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)


def hex_digest(key: bytes, data: bytes, nbytes: int) -> str:
    """*nbytes* keyed random bytes as lowercase hex."""
    return hashlib.blake2b(data, key=key, digest_size=nbytes).hexdigest()


def uuid4_like(key: bytes, data: bytes) -> str:
    """A random-looking, deterministic UUID in version-4 layout."""
    h = hex_digest(key, data, 16)
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[0:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def pick(value: int, table: tuple[tuple[str, float], ...]) -> str:
    """Choose from a cumulative-weight table ``((name, upper bound in [0,1]), ...)``."""
    u = value / _U16
    for name, upper in table:
        if u < upper:
            return name
    return table[-1][0]


def cumulative(weights: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
    """Turn ``((name, weight), ...)`` into a cumulative table for :func:`pick`."""
    total = sum(w for _, w in weights)
    out: list[tuple[str, float]] = []
    acc = 0.0
    for name, weight in weights:
        acc += weight / total
        out.append((name, acc))
    return tuple(out)
