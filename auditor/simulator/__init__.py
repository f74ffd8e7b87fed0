"""A faithful, deterministic simulator of Bandwidth's Voice API (Get Call State, List Calls,
OAuth2 token), with a lazily generated call population, auth, a strict rate limit and
reproducible faults. See :class:`Simulator` and :class:`Population`.
"""

from __future__ import annotations

from auditor.simulator.config import Burst, SimConfig
from auditor.simulator.population import Population
from auditor.simulator.server import Simulator
from auditor.simulator.stats import SimStats

__all__ = ["Burst", "Population", "SimConfig", "SimStats", "Simulator"]
