"""Shared fixtures. Simulator fixtures first; other modules' fixtures may follow."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from auditor.simulator import SimConfig, Simulator

# A fixed anchor: with the (default) frozen clock, what the server serves is then a pure
# function of the seed and of sim.advance(), so tests compare bodies field by field.
SIM_NOW = 1_781_000_000.0


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """A started simulator on 127.0.0.1 (2,000 calls, seed 1, frozen clock)."""
    async with Simulator(SimConfig(calls=2000, seed=1, now=SIM_NOW)) as simulator:
        yield simulator
