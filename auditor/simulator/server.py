"""The simulator as an async context manager: an aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
from types import TracebackType

from aiohttp import web

from auditor.simulator.config import SimConfig
from auditor.simulator.handlers import Api
from auditor.simulator.population import Population
from auditor.simulator.stats import SimStats

# Requests still running at shutdown are woken by the closing event and drop their
# connections; this only bounds what aiohttp waits for anything else.
_SHUTDOWN_TIMEOUT = 1.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Simulator:
    """Bandwidth Voice API simulator; ``async with Simulator(cfg) as sim: ...``."""

    def __init__(self, cfg: SimConfig, host: str = "127.0.0.1", port: int = 0, *,
                 allow_non_loopback: bool = False) -> None:
        if not allow_non_loopback and not is_loopback(host):
            raise ValueError(f"refusing to bind the simulator to non-loopback host {host!r}")
        self.config = cfg
        self.host = host
        self.population = Population(cfg)
        self.clock = self.population.clock
        self.stats = SimStats()
        self._closing = asyncio.Event()
        self._api = Api(self.population, self.stats, self._closing)
        self._runner: web.AppRunner | None = None
        self._port = port

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._closing.clear()  # a stopped simulator may be started again
        app = web.Application()
        app.add_routes(self._api.routes())
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving; requests stalled in latency or "slow" are cut off at once."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        """What the auditor calls ``--base-url``."""
        return f"{self.url}/api/v2"

    @property
    def token_url(self) -> str:
        return f"{self.url}/api/v1/oauth2/token"

    def now(self) -> float:
        return self.clock.now()

    def advance(self, seconds: float) -> None:
        """Move the simulated clock forward (young calls appear, tokens expire...)."""
        self.clock.advance(seconds)

    def reset_stats(self) -> None:
        """Zero the counters (the same :attr:`stats` object stays live)."""
        self._api.reset_stats()
