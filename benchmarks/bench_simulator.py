"""How many Get Call State requests a second the simulator serves.

The server runs as ``auditor simulate --json`` in its own process (so client and server do
not share a core) with no latency and no rate limit; a keep-alive aiohttp client asks for
distinct, visible call ids at a fixed concurrency, as an audit run does. ``ok`` means every
answer was a 200 with the right id and the server stopped cleanly on SIGTERM; the speed
is reported against the 4,000 GET/s target but never fails the benchmark.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import os
import signal
import sys
import time
from typing import Any

import aiohttp
import orjson

from auditor.simulator import Population, SimConfig
from auditor.simulator.auth import basic_header

TARGET_GETS_PER_S = 4000.0
CONCURRENCY = 64
SEED = 7


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(_run(quick))


def _commands(calls: int) -> list[list[str]]:
    flags = ["--json", "--calls", str(calls), "--seed", str(SEED)]
    commands = []
    if importlib.util.find_spec("auditor.cli") is not None:
        commands.append([sys.executable, "-m", "auditor", "simulate", *flags])
    # Until `auditor simulate` exists (or if it fails to start), the package entry point.
    commands.append([sys.executable, "-m", "auditor.simulator", *flags])
    return commands


async def _start(calls: int) -> tuple[asyncio.subprocess.Process, dict[str, Any], list[str]]:
    failures = []
    for command in _commands(calls):
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30.0)
            info = orjson.loads(line) if line else None
        except (TimeoutError, orjson.JSONDecodeError):
            info = None
        if isinstance(info, dict) and "base_url" in info:
            return proc, info, command
        if proc.returncode is None:
            proc.kill()
        _, err = await proc.communicate()
        failures.append(f"{' '.join(command[1:4])}: {err.decode(errors='replace')[-300:]}")
    raise RuntimeError("simulator did not start: " + " | ".join(failures))


def _visible_ids(info: dict[str, Any], calls: int, count: int) -> list[str]:
    """Ids created between 6.5 days and 1 hour before the server's anchor: visible and
    unexpired for the whole benchmark, whatever the server's running clock says."""
    pop = Population(SimConfig(calls=calls, seed=SEED, account_id=info["account_id"],
                               now=info["now"]))
    anchor_ms = int(info["now"] * 1000)
    lo = pop.timeline.first_at_or_after(anchor_ms - int(6.5 * 86_400_000))
    hi = pop.timeline.first_after(anchor_ms - 3_600_000)
    if hi - lo < count:
        raise RuntimeError(f"only {hi - lo} usable ids, wanted {count}")
    return [pop.id_at(i) for i in range(lo, lo + count)]


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far; None off Linux.

    Throughput on a shared 2-core machine swings with whatever else runs; requests per
    second of *server CPU* says what the server itself can do.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def _hammer(info: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    statuses: collections.Counter[int] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    wrong_body = 0
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        client_auth = basic_header(info["client_id"], info["client_secret"])
        async with session.post(info["token_url"], data={"grant_type": "client_credentials"},
                                headers={"Authorization": client_auth}) as resp:
            resp.raise_for_status()
            token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        prefix = f"{info['base_url']}/accounts/{info['account_id']}/calls/"
        work = iter(ids)

        async def worker() -> None:
            nonlocal wrong_body
            for call_id in work:
                try:
                    async with session.get(prefix + call_id, headers=headers) as r:
                        body = await r.read()
                        statuses[r.status] += 1
                        if r.status == 200 and orjson.loads(body).get("callId") != call_id:
                            wrong_body += 1
                except aiohttp.ClientError as exc:
                    errors[type(exc).__name__] += 1

        # Open the pool's connections first, so the timing is about serving requests.
        warm = ids[:CONCURRENCY * 4]
        work = iter(warm)
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        work = iter(ids[len(warm):])
        cpu_before = _cpu_seconds(info["pid"])
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        cpu_after = _cpu_seconds(info["pid"])
    timed = len(ids) - len(warm)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return {
        "requests": timed, "seconds": round(elapsed, 3),
        "gets_per_s": round(timed / elapsed, 1),
        "server_cpu_seconds": None if cpu is None else round(cpu, 3),
        "gets_per_server_cpu_s": round(timed / cpu, 1) if cpu else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "client_errors": dict(errors), "wrong_bodies": wrong_body,
    }


async def _run(quick: bool) -> dict[str, Any]:
    calls = 20_000 if quick else 100_000
    requests = 6_000 if quick else 40_000
    proc, info, command = await _start(calls)
    try:
        ids = _visible_ids(info, calls, requests)
        result = await _hammer(info, ids)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            # communicate() drains the pipes, so the server can never block on them.
            await asyncio.wait_for(proc.communicate(), 10.0)
        except TimeoutError:
            proc.kill()
            await proc.communicate()
        rc = proc.returncode
    result.update(
        command=" ".join(["python", *command[1:4]]), calls=calls, concurrency=CONCURRENCY,
        target_gets_per_s=TARGET_GETS_PER_S,
        meets_target=result["gets_per_s"] >= TARGET_GETS_PER_S,
        server_exit_code=rc,
    )
    result["ok"] = (
        set(result["statuses"]) == {"200"} and not result["client_errors"]
        and result["wrong_bodies"] == 0 and rc == 0
    )
    return result
