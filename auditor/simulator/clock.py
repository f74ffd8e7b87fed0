"""The simulator's notion of "now", which tests move forward instead of sleeping."""

from __future__ import annotations

import math
import time


class SimClock:
    """Epoch seconds = anchor + advanced offset (+ real time elapsed, unless frozen).

    Frozen clocks make what the server serves a pure function of the seed and of the
    ``advance()`` calls, so a test can compare a served body with ``Population.body``
    field by field. A running clock is built on ``time.monotonic`` so it never goes back.
    """

    __slots__ = ("_anchor", "_frozen", "_mono0", "_offset")

    def __init__(self, anchor: float, *, frozen: bool) -> None:
        self._anchor = anchor
        self._frozen = frozen
        self._offset = 0.0
        self._mono0 = time.monotonic()

    @property
    def anchor(self) -> float:
        """The epoch second the population was generated around."""
        return self._anchor

    @property
    def frozen(self) -> bool:
        return self._frozen

    def now(self) -> float:
        """Current simulated epoch seconds."""
        if self._frozen:
            return self._anchor + self._offset
        return self._anchor + self._offset + (time.monotonic() - self._mono0)

    def now_ms(self) -> int:
        """Current simulated epoch milliseconds (floored, the unit all call times use)."""
        return math.floor(self.now() * 1000.0)

    def advance(self, seconds: float) -> None:
        """Move the clock forward; it never moves back."""
        if not seconds >= 0:
            raise ValueError("the simulator clock only moves forward")
        self._offset += seconds
