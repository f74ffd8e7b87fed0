"""CompactIdSet: a set semantics check, growth, probing edge cases, and its memory per id."""

from __future__ import annotations

import hashlib
from typing import ClassVar

import pytest

from auditor import idset
from auditor.idset import DIGEST_BYTES, CompactIdSet


def ids(start: int, stop: int) -> list[str]:
    return [f"c-{n:08x}-1b2c-4d5e-{n * 2654435761 % 2**48:012x}" for n in range(start, stop)]


def test_add_reports_whether_the_value_is_new() -> None:
    seen = CompactIdSet()
    assert seen.add("c-1") is True
    assert seen.add("c-1") is False
    assert seen.add("c-2") is True
    assert len(seen) == 2
    assert "c-1" in seen and "c-2" in seen
    assert "c-3" not in seen
    assert 1 not in seen  # not a string: never a member


def test_values_are_compared_exactly() -> None:
    seen = CompactIdSet()
    for value in ["c-a", "C-A", "c-a ", "é", "e\u0301", "", "c-a\x00"]:
        assert seen.add(value) is True
    assert len(seen) == 7


def test_matches_a_python_set_through_many_growths() -> None:
    seen, reference = CompactIdSet(), set()
    values = ids(0, 30_000) + ids(10_000, 40_000)  # a third of them repeated
    for value in values:
        assert seen.add(value) is (value not in reference)
        reference.add(value)
    assert len(seen) == len(reference) == 40_000
    assert all(value in seen for value in ids(0, 40_000))
    assert not any(value in seen for value in ids(40_000, 50_000))


@pytest.mark.parametrize("count", [1_000, 10_000, 100_000])
def test_memory_per_id_stays_compact(count: int) -> None:
    seen = CompactIdSet()
    for value in ids(0, count):
        seen.add(value)
    # 12-byte slots, 47 % to 70 % full: 17 to 26 bytes per id (a set of str: 100+).
    assert seen.nbytes == seen._capacity * DIGEST_BYTES == seen._capacity * 12
    assert 12 / 0.7 <= seen.nbytes / count <= 12 / (0.7 / 1.5) + 0.1


def test_expected_size_avoids_growing() -> None:
    seen = CompactIdSet(expected=20_000)
    before = seen.nbytes
    for value in ids(0, 20_000):
        seen.add(value)
    assert seen.nbytes == before
    assert len(seen) == 20_000


def test_sets_are_salted_differently() -> None:
    # The slot of an id is unpredictable, so crafted inputs cannot build long probe chains.
    a, b = CompactIdSet(), CompactIdSet()
    assert a._salt != b._salt
    assert a._digest("c-1") != b._digest("c-1")


class FixedDigests:
    """A stand-in for hashlib.blake2b that returns chosen digests, to force edge cases."""

    SALT_SIZE = hashlib.blake2b.SALT_SIZE
    table: ClassVar[dict[bytes, bytes]] = {}

    def __init__(self, data: bytes, *, digest_size: int, salt: bytes) -> None:
        self._data = data

    def digest(self) -> bytes:
        return self.table.get(self._data) or hashlib.sha256(self._data).digest()[:DIGEST_BYTES]


def digest_at(slot: int, tag: int, capacity: int) -> bytes:
    """A digest whose home slot is *slot* (tag makes several digests with the same home)."""
    return (slot + tag * capacity).to_bytes(DIGEST_BYTES, "little")


def test_linear_probing_wraps_around_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = CompactIdSet()
    last = seen._capacity - 1
    FixedDigests.table = {
        f"c-{t}".encode(): digest_at(last, t, seen._capacity) for t in range(1, 5)
    }
    monkeypatch.setattr(idset, "blake2b", FixedDigests)
    for tag in range(1, 5):  # all want the last slot: three of them wrap to the start
        assert seen.add(f"c-{tag}") is True
    assert all(f"c-{tag}" in seen for tag in range(1, 5))
    assert all(seen.add(f"c-{tag}") is False for tag in range(1, 5))
    assert seen._table[:DIGEST_BYTES] == digest_at(last, 2, seen._capacity)


def test_an_all_zero_digest_is_still_a_member(monkeypatch: pytest.MonkeyPatch) -> None:
    FixedDigests.table = {b"c-zero": bytes(DIGEST_BYTES)}
    monkeypatch.setattr(idset, "blake2b", FixedDigests)
    seen = CompactIdSet()
    assert seen.add("c-zero") is True
    assert "c-zero" in seen
    assert seen.add("c-zero") is False
    assert len(seen) == 1


def test_a_digest_collision_counts_as_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    # The documented (2**-128-likely) failure mode: a colliding id is taken as a repeat.
    same = (12345).to_bytes(DIGEST_BYTES, "little")
    FixedDigests.table = {b"c-one": same, b"c-other": same}
    monkeypatch.setattr(idset, "blake2b", FixedDigests)
    seen = CompactIdSet()
    assert seen.add("c-one") is True
    assert seen.add("c-other") is False
