"""The floor to compare against: a minimal aiohttp GET loop, no parsing, no writing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp

from benchmarks.common import Sim


async def token(session: aiohttp.ClientSession, sim: Sim) -> str:
    auth = aiohttp.BasicAuth(str(sim.info["client_id"]), str(sim.info["client_secret"]))
    async with session.post(sim.token_url, data={"grant_type": "client_credentials"},
                            auth=auth) as resp:
        resp.raise_for_status()
        return str((await resp.json())["access_token"])


async def get_loop(sim: Sim, ids: Sequence[str], concurrency: int) -> dict[str, Any]:
    """GET every id once with *concurrency* workers over one keep-alive session."""
    statuses: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = {"Authorization": "Bearer " + await token(session, sim),
                   "Accept": "application/json"}
        prefix = f"{sim.base_url}/accounts/{sim.account_id}/calls/"
        work = iter(ids)

        async def worker() -> None:
            for call_id in work:
                async with session.get(prefix + call_id, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"requests": len(ids), "seconds": round(elapsed, 3),
            "per_s": round(len(ids) / elapsed, 1),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}
