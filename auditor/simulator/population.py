"""The simulated account's calls: lazy, deterministic, O(1) memory.

Nothing is stored per call. An id encodes its index (see :mod:`callid`), the index gives
the creation time (see :mod:`timeline`) and the facts (see :mod:`calls`), and the clock
gives the state. Only a bounded cache of encoded bodies is kept, for the server's speed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from auditor.simulator.callid import CallIdCodec
from auditor.simulator.calls import CallFacts, CallMaker
from auditor.simulator.clock import SimClock
from auditor.simulator.config import SimConfig
from auditor.simulator.export import export_ids
from auditor.simulator.timeline import Timeline

# Encoded bodies kept (~25 MB at most). When full the cache is simply emptied: O(1) and
# good enough, since a run touches each id about once and a benchmark a small id set.
_CACHE_MAX = 32_768


class Population:
    """The call population of one :class:`SimConfig`, seen through a clock."""

    def __init__(self, cfg: SimConfig, clock: SimClock | None = None) -> None:
        self.config = cfg
        if clock is None:
            anchor = cfg.now if cfg.now is not None else time.time()
            clock = SimClock(anchor, frozen=cfg.frozen_clock)
        self.clock = clock
        self._codec = CallIdCodec(cfg.seed, cfg.calls)
        self._timeline = Timeline(cfg, clock.anchor * 1000.0)
        self._maker = CallMaker(cfg.seed, cfg.account_id)
        self._vd_ms = round(cfg.visibility_delay * 1000.0)
        self._cache: dict[int, tuple[int, bytes]] = {}

    def __len__(self) -> int:
        return self.config.calls

    @property
    def timeline(self) -> Timeline:
        return self._timeline

    def now(self) -> float:
        """The simulated epoch seconds the server answers for."""
        return self.clock.now()

    # ids -----------------------------------------------------------------------------
    def id_at(self, index: int) -> str:
        if not 0 <= index < self.config.calls:
            raise IndexError(index)
        return self._codec.encode(index)

    def ids(self) -> Iterator[str]:
        """Every call id in creation-time order, generated on the fly."""
        encode = self._codec.encode
        for index in range(self.config.calls):
            yield encode(index)

    def index_of(self, call_id: str) -> int | None:
        """The index *call_id* encodes; None for ids that are not this population's."""
        return self._codec.decode(call_id)

    def export_ids(self, path: str | Path) -> int:
        """Write every id to *path* (``.csv`` or ``.parquet``, column ``callId``)."""
        return export_ids(self.ids(), Path(path))

    # facts and visibility ---------------------------------------------------------------
    def facts(self, index: int) -> CallFacts:
        return self._maker.facts(index, self._timeline.created_ms(index))

    def visible_facts(self, f: CallFacts, now_ms: int) -> bool:
        """Created at least visibility_delay ago and not past 7-day retention."""
        return now_ms - f.created_ms >= self._vd_ms and now_ms < f.expires_ms

    def visible(self, call_id: str, now: float | None = None) -> bool:
        """False when unknown, expired, or younger than the visibility delay."""
        index = self.index_of(call_id)
        if index is None:
            return False
        return self.visible_facts(self.facts(index), self._ms(now))

    # bodies ---------------------------------------------------------------------------
    def body(self, call_id: str) -> dict[str, Any] | None:
        """The callState the server serves for *call_id* now; None when it answers 404."""
        return self.body_at(call_id, None)

    def body_at(self, call_id: str, now: float | None) -> dict[str, Any] | None:
        """The callState served for *call_id* at epoch seconds *now* (None: 404)."""
        index = self.index_of(call_id)
        if index is None:
            return None
        f = self.facts(index)
        now_ms = self._ms(now)
        if not self.visible_facts(f, now_ms):
            return None
        return self._body(f, now_ms)

    def encoded(self, index: int, now_ms: int, call_id: str | None = None) -> bytes | None:
        """JSON bytes of call *index* at *now_ms*, or None when not visible (cached).

        *call_id*, when the caller has it, saves re-encoding the id.
        """
        hit = self._cache.get(index)
        if hit is not None and now_ms < hit[0]:
            return hit[1]
        return self.encoded_facts(self.facts(index), now_ms, call_id)

    def encoded_facts(self, f: CallFacts, now_ms: int,
                      call_id: str | None = None) -> bytes | None:
        """Like :meth:`encoded`, for facts the caller already has (List Calls' scan)."""
        hit = self._cache.get(f.index)
        if hit is not None and now_ms < hit[0]:
            return hit[1]
        if not self.visible_facts(f, now_ms):
            return None
        data = orjson.dumps(self._body(f, now_ms, call_id))
        cache = self._cache
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        # Valid until the state next changes; visibility only ends at expiry, which
        # next_change_ms never passes.
        cache[f.index] = (f.next_change_ms(now_ms), data)
        return data

    def _body(self, f: CallFacts, now_ms: int, call_id: str | None = None) -> dict[str, Any]:
        parent = self._codec.encode(f.parent_index) if f.parent_index is not None else None
        if call_id is None:
            call_id = self._codec.encode(f.index)
        return self._maker.body(f, call_id, parent, now_ms)

    def _ms(self, now: float | None) -> int:
        return self.clock.now_ms() if now is None else math.floor(now * 1000.0)
