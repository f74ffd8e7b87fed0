"""Reliability: nothing lost or wrong under faults, odd bodies, expiring tokens and caps."""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from auditor import AuditConfig, BasicCredentials, Secret, run_audit
from auditor.simulator import SimConfig, Simulator
from auditor.sink import read_dataset
from auditor.verify import verify_dataset
from tests.test_pipeline import MALFORMED, config_for, frozen_config, write_ids


async def test_soak_twenty_thousand_ids_through_every_fault(tmp_path: Path) -> None:
    """5 % 5xx, 1 % resets, 1 % cut-off bodies, 0.5 % stalls, latency, and a limit that 429s."""
    config = frozen_config(
        calls=20_000,
        seed=20,
        error_rate=0.05,
        reset_rate=0.01,
        truncate_rate=0.01,
        slow_rate=0.005,
        slow_seconds=30.0,
        latency_ms=2.0,
        rate=1500,
    )
    async with Simulator(config, host="127.0.0.1", port=0) as sim:
        ids = list(sim.population.ids())
        rows = ids + ids[::7] + MALFORMED  # duplicates and malformed ids in the mix
        source = write_ids(tmp_path / "ids.csv", rows)
        summary = await run_audit(
            config_for(sim, [source], tmp_path / "out", rate=2250, concurrency=None, timeout=1.0)
        )
        stats = sim.stats

        table = read_dataset(tmp_path / "out")
        written = Counter(table.column("call_id").to_pylist())
        assert set(written) == set(ids) | set(MALFORMED)  # lost = 0
        assert max(written.values()) == 1  # duplicates = 0
        assert summary.status_counts.get("failed", 0) == 0
        check = verify_dataset(tmp_path / "out", sim.population)
        assert check.clean, check.mismatches[:5]
        visible = sum(sim.population.visible(call_id, sim.now()) for call_id in ids)
        assert check.ok_rows == visible  # every visible call ok, every other one not_found
        assert not set(stats.served_by_id) - set(ids)  # no request for a malformed id
        # every kind of fault was met, and 429s were forced and obeyed
        assert stats.resets > 0 and stats.truncated > 0 and stats.slow > 0
        assert stats.requests_by_status.get(500, 0) + stats.requests_by_status.get(503, 0) > 0
        assert stats.throttled > 0 and summary.throttled > 0
        assert summary.exit_code == 0


# -- a deliberately broken service, for what the simulator never does ---------------------

ACCOUNT = "9900000"
ELSEWHERE = web.AppKey("elsewhere", str)
GOOD = {"callId": "", "state": "disconnected", "startTime": "2026-12-01T10:00:00.000Z"}


class OddService:
    """Serves bodies a healthy API never should; counts what it is asked."""

    def __init__(self) -> None:
        self.asked: Counter[str] = Counter()
        self.auth_seen: list[str | None] = []

    async def call(self, request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["call_id"]
        self.asked[call_id] += 1
        self.auth_seen.append(request.headers.get("Authorization"))
        nth = self.asked[call_id]
        if call_id == "c-wrong-types":
            body = {
                "callId": call_id,
                "state": "disconnected",
                "startTime": "last tuesday",
                "to": 19195551234,
                "stirShaken": {"verstat": 7},
                "answerTime": None,
            }
            return web.json_response(body)
        if call_id == "c-other-call":
            return web.json_response({"callId": "c-someone-else", "state": "disconnected"})
        if call_id == "c-html-once":
            if nth == 1:
                return web.Response(status=200, text="<html>gateway hiccup</html>")
            return web.json_response(dict(GOOD, callId=call_id))
        if call_id == "c-never-json":
            return web.Response(status=200, text='{"callId": "c-never-js')
        if call_id == "c-huge":
            return web.json_response({"callId": call_id, "padding": "x" * (2 << 20)})
        if call_id == "c-redirect":
            raise web.HTTPFound(location=request.app[ELSEWHERE] + "/steal")
        if call_id == "c-slow":
            await asyncio.sleep(30)
        if call_id == "c-bad-request":
            return web.json_response(
                {"type": "validation", "description": "Invalid call id", "id": None}, status=400
            )
        return web.json_response(dict(GOOD, callId=call_id))


@pytest.fixture
async def odd(tmp_path: Path) -> AsyncIterator[tuple[OddService, str, OddService]]:
    service, thief = OddService(), OddService()
    thief_app = web.Application()
    thief_app.router.add_route("*", "/{tail:.*}", _record(thief))
    thief_runner = web.AppRunner(thief_app)
    await thief_runner.setup()
    thief_site = web.TCPSite(thief_runner, "127.0.0.2", 0)
    await thief_site.start()
    thief_port = thief_runner.addresses[0][1]

    app = web.Application()
    app[ELSEWHERE] = f"http://127.0.0.2:{thief_port}"
    app.router.add_get("/api/v2/accounts/{account}/calls/{call_id}", service.call)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield service, f"http://127.0.0.1:{port}/api/v2", thief
    finally:
        await runner.cleanup()
        await thief_runner.cleanup()


def _record(service: OddService):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        service.asked[request.path] += 1
        service.auth_seen.append(request.headers.get("Authorization"))
        return web.json_response({})

    return handler


@pytest.mark.parametrize("http_client", ["lean", "aiohttp"])
async def test_odd_bodies_caps_and_redirects(
    odd: tuple[OddService, str, OddService], tmp_path: Path, http_client: str
) -> None:
    service, base_url, thief = odd
    ids = [
        "c-wrong-types",
        "c-other-call",
        "c-html-once",
        "c-never-json",
        "c-huge",
        "c-redirect",
        "c-slow",
        "c-bad-request",
        "c-fine",
    ]
    source = write_ids(tmp_path / "ids.csv", ids)
    config = AuditConfig(
        inputs=[str(source)],
        output=str(tmp_path / "out"),
        account_id=ACCOUNT,
        credentials=BasicCredentials("user", Secret("pass-word-secret")),
        base_url=base_url,
        rate=None,
        concurrency=4,
        max_attempts=3,
        timeout=0.5,
        progress=False,
        http_client=http_client,
    )
    started = time.monotonic()
    summary = await run_audit(config)
    assert time.monotonic() - started < 20  # the stalled call was cut off by the timeout
    rows = {row["call_id"]: row for row in read_dataset(tmp_path / "out").to_pylist()}
    assert set(rows) == set(ids)
    assert summary.exit_code == 1  # some ids failed

    wrong = rows["c-wrong-types"]
    assert wrong["status"] == "ok" and wrong["state"] == "disconnected"
    assert wrong["start_time"] is None and wrong["to"] is None
    assert "startTime: unparseable timestamp 'last tuesday'" in wrong["error"]
    assert "to: expected string, got number" in wrong["error"]

    other = rows["c-other-call"]
    assert other["status"] == "failed" and "different call" in other["error"]
    assert other["state"] is None  # another call's data is never stored under this id
    assert service.asked["c-other-call"] == 3

    assert rows["c-html-once"]["status"] == "ok" and rows["c-html-once"]["attempts"] == 2
    assert rows["c-never-json"]["status"] == "failed"
    assert "not valid JSON" in rows["c-never-json"]["error"]
    assert rows["c-huge"]["status"] == "failed"
    assert "larger than" in rows["c-huge"]["error"]
    assert rows["c-slow"]["status"] == "failed" and rows["c-slow"]["error"] == "timed out"
    assert rows["c-slow"]["http_status"] is None and rows["c-slow"]["attempts"] == 3
    bad = rows["c-bad-request"]
    assert bad["status"] == "failed" and bad["attempts"] == 1 and bad["http_status"] == 400
    assert bad["error"] == "HTTP 400 validation: Invalid call id"

    redirect = rows["c-redirect"]
    assert redirect["status"] == "failed" and redirect["http_status"] == 302
    assert not thief.asked and not thief.auth_seen  # credentials never left for another host
    assert rows["c-fine"]["status"] == "ok"


async def test_expiring_tokens_are_refreshed_once_for_all_workers(tmp_path: Path) -> None:
    # A running clock, so that tokens really expire after 3 seconds.
    config = SimConfig(calls=1200, seed=30, token_ttl=3.0, frozen_clock=False)
    async with Simulator(config, host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        started = time.monotonic()
        summary = await run_audit(config_for(sim, [source], tmp_path / "out", rate=180))
        elapsed = time.monotonic() - started
        assert elapsed > 6  # the run spans at least three token lifetimes
        assert summary.status_counts.get("failed", 0) == 0
        assert sim.stats.requests_by_status.get(401, 0) == 0  # refreshed before expiry
        lifetimes = math.ceil(elapsed / 3.0)
        assert lifetimes <= sim.stats.tokens_issued <= lifetimes + 1
        assert summary.tokens_fetched == sim.stats.tokens_issued


async def test_token_endpoint_down_is_a_clear_error(tmp_path: Path) -> None:
    async with Simulator(frozen_config(calls=20, seed=31), host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        # a loopback port with nothing listening: connection refused
        dead = "http://127.0.0.1:9/api/v1/oauth2/token"
        summary = await run_audit(config_for(sim, [source], tmp_path / "out", token_url=dead))
        assert summary.exit_code == 3
        assert "could not get an OAuth2 token" in str(summary.error)
        assert "cannot connect" in str(summary.error)
        assert sim.stats.total_requests == 0


async def test_mid_stream_input_error_keeps_what_was_fetched(tmp_path: Path) -> None:
    import gzip

    async with Simulator(frozen_config(calls=150, seed=32), host="127.0.0.1", port=0) as sim:
        ids = list(sim.population.ids())
        lines = ["callId", *ids, *(f"filler-{i:07d}" for i in range(110_000))]
        raw = gzip.compress("\n".join(lines).encode())
        broken = tmp_path / "ids.csv.gz"
        broken.write_bytes(raw[: len(raw) * 3 // 4])  # a gzip cut off three quarters in
        summary = await run_audit(config_for(sim, [broken], tmp_path / "out"))
        assert summary.exit_code == 2
        assert "ids.csv.gz" in str(summary.error)
        table = read_dataset(tmp_path / "out")
        statuses = dict(
            zip(
                table.column("call_id").to_pylist(), table.column("status").to_pylist(), strict=True
            )
        )
        assert all(statuses.get(call_id) in ("ok", "not_found") for call_id in ids)


def test_secrets_never_show_in_repr() -> None:
    config = AuditConfig(
        inputs=["x.csv"],
        output="out",
        account_id="9900000",
        credentials=BasicCredentials("user", Secret("hunter2-very-secret")),
    )
    assert "hunter2-very-secret" not in repr(config)
    assert "hunter2-very-secret" not in str(config.credentials)
    assert "***" in repr(config)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that fills up mid-run (needs root, as in CI)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


async def test_full_disk_stops_with_exit_4_and_no_half_file(
    tiny_disk: Path, tmp_path: Path
) -> None:
    async with Simulator(frozen_config(calls=3000, seed=33), host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", sim.population.ids())
        out = tiny_disk / "out"
        summary = await run_audit(config_for(sim, [source], out, row_group_rows=100))
        assert summary.exit_code == 4
        assert "cannot write a part (No space left on device)" in str(summary.error)
        assert summary.unwritten > 0 and summary.stopped == "output"
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
        written = read_dataset(out)  # every published part still reads
        assert 0 < written.num_rows < 3000
        assert written.num_rows == summary.rows_written
