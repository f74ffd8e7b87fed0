"""The Bandwidth Voice API simulator, over real HTTP on 127.0.0.1.

Time never comes from sleeping: the simulator clock is frozen at SIM_NOW and moved with
sim.advance(). Only the rate limiter, latency and stalls are about real time, and those
tests measure rather than wait for something.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import email.utils
import json
import math
import os
import re
import signal
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import orjson
import pyarrow.parquet as pq
import pytest
import yarl

from auditor.callids import is_valid_call_id
from auditor.simulator import Burst, Population, SimConfig, SimStats, Simulator
from auditor.simulator.auth import basic_header
from auditor.simulator.calls import DOCUMENTED_CAUSES, RETENTION_MS, UNDOCUMENTED_CAUSES
from auditor.simulator.faults import FaultPlanner, latency_seconds
from tests.conftest import SIM_NOW

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": basic_header(user, password)}


BASIC = basic("sim-user", "sim-pass")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
KNOWN_FIELDS = {
    "applicationId", "accountId", "callId", "parentCallId", "to", "from", "direction",
    "state", "stirShaken", "identity", "enqueuedTime", "startTime", "answerTime", "endTime",
    "disconnectCause", "errorMessage", "errorId", "lastUpdate",
}
TIME_FIELDS = ("enqueuedTime", "startTime", "answerTime", "endTime", "lastUpdate")


# helpers ------------------------------------------------------------------------------
def config(**overrides: Any) -> SimConfig:
    values: dict[str, Any] = {"calls": 2000, "seed": 1, "now": SIM_NOW}
    values.update(overrides)
    return SimConfig(**values)


def call_url(sim: Simulator, call_id: str, account: str | None = None) -> str:
    return f"{sim.base_url}/accounts/{account or sim.config.account_id}/calls/{call_id}"


def list_url(sim: Simulator) -> str:
    return f"{sim.base_url}/accounts/{sim.config.account_id}/calls"


def now_ms(pop: Population) -> int:
    return pop.clock.now_ms()


def visible_indices(pop: Population) -> list[int]:
    t = now_ms(pop)
    return [i for i in range(len(pop)) if pop.visible_facts(pop.facts(i), t)]


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema: ``nullable`` becomes a null type, refs move."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items()
           if k not in ("nullable", "example", "description")}
    if "$ref" in out:
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/$defs/")
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def _validator(name: str) -> jsonschema.Draft202012Validator:
    spec = json.loads((FIXTURES / "bandwidth_schemas.json").read_text())
    defs = {k: _openapi_to_jsonschema(v) for k, v in spec["schemas"].items()}
    return jsonschema.Draft202012Validator({"$defs": defs, "$ref": f"#/$defs/{name}"})


CALL_STATE = _validator("callState")
API_ERROR = _validator("voiceApiError")


def assert_call_state(body: dict[str, Any]) -> None:
    CALL_STATE.validate(body)
    for name in TIME_FIELDS:
        value = body.get(name)
        assert value is None or TIMESTAMP.fullmatch(value), (name, value)
    assert body["lastUpdate"] is not None


async def get_json(session: aiohttp.ClientSession, url: str | yarl.URL,
                   **kw: Any) -> tuple[int, Any]:
    async with session.get(url, **kw) as resp:
        return resp.status, orjson.loads(await resp.read())


async def fetch_token(session: aiohttp.ClientSession, sim: Simulator) -> str:
    async with session.post(sim.token_url, data={"grant_type": "client_credentials"},
                            headers=basic("sim-client", "sim-secret")) as resp:
        assert resp.status == 200
        token: str = (await resp.json())["access_token"]
        return token


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture(scope="module")
def big_pop() -> Population:
    """20,000 calls: enough for every rare feature of the mix to show up."""
    return Population(config(calls=20_000, seed=3))


@pytest.fixture(scope="module")
def big_bodies(big_pop: Population) -> list[dict[str, Any]]:
    bodies = [big_pop.body(call_id) for call_id in big_pop.ids()]
    return [b for b in bodies if b is not None]


# the population ---------------------------------------------------------------------------
def test_ids_look_like_bandwidths_and_encode_their_index() -> None:
    pop = Population(config())
    ids = list(pop.ids())
    assert len(ids) == len(set(ids)) == 2000
    shape = re.compile(
        r"c-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    for index, call_id in enumerate(ids):
        assert shape.fullmatch(call_id) and is_valid_call_id(call_id)
        assert pop.index_of(call_id) == index
        assert pop.id_at(index) == call_id


def test_unknown_garbled_and_foreign_ids_are_not_indexed() -> None:
    pop = Population(config())
    call_id = pop.id_at(123)
    garbled = call_id[:-1] + ("0" if call_id[-1] != "0" else "1")
    assert pop.index_of(garbled) is None
    assert pop.index_of(call_id.upper()) is None
    assert pop.index_of("c-15ac29a2-1331029c-2cb0-4a07-b215-b22865662d85") is None
    assert pop.index_of("c-abc") is None
    assert pop.index_of("not an id") is None
    assert Population(config(seed=2)).index_of(call_id) is None  # checksum is per seed
    assert Population(config(calls=100)).index_of(call_id) is None  # index out of range
    assert Population(config(calls=100)).index_of(pop.id_at(99)) == 99  # ids are per seed


def test_population_is_deterministic_from_seed() -> None:
    a, b, other = Population(config()), Population(config()), Population(config(seed=2))
    assert list(a.ids()) == list(b.ids())
    assert set(a.ids()).isdisjoint(other.ids())
    for call_id in list(a.ids())[::50]:
        assert a.body(call_id) == b.body(call_id)


def test_million_calls_start_instantly_in_constant_memory() -> None:
    tracemalloc.start()
    started = time.perf_counter()
    pop = Population(config(calls=1_000_000))
    last = pop.id_at(999_999)
    assert pop.index_of(last) == 999_999
    assert pop.body(last) is not None or not pop.visible(last, SIM_NOW)
    ids = pop.ids()
    assert next(ids) == pop.id_at(0)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 2_000_000


def test_creation_times_are_monotone_over_eight_days_with_young_calls_and_bursts() -> None:
    pop = Population(config(calls=5000, bursts=(Burst(seconds_ago=3600, calls=500, duration=60),)))
    created = [pop.facts(i).created_ms for i in range(len(pop))]
    assert created == sorted(created)
    anchor = int(SIM_NOW * 1000)
    assert anchor - 8 * 86_400_000 <= created[0] < anchor - 7.9 * 86_400_000
    assert created[-1] <= anchor
    young = [t for t in created if t > anchor - 60_000]
    assert len(young) == 50  # young_fraction 1% of 5000
    in_burst = [t for t in created if anchor - 3_600_000 <= t <= anchor - 3_540_000]
    assert 500 <= len(in_burst) < 510  # the burst plus a few background calls
    # Binary searches agree with a linear scan.
    t = created[1234]
    assert pop.timeline.first_at_or_after(t) == created.index(t)
    assert pop.timeline.first_after(t) == max(i for i, c in enumerate(created) if c <= t) + 1


def test_visibility_unknown_expired_young() -> None:
    pop = Population(config())
    assert not pop.visible("c-15ac29a2-1331029c-2cb0-4a07-b215-b22865662d85", SIM_NOW)
    oldest = pop.id_at(0)  # created 8 days ago: hung up more than 7 days ago
    assert not pop.visible(oldest, SIM_NOW) and pop.body(oldest) is None
    youngest = pop.id_at(len(pop) - 1)
    assert not pop.visible(youngest, SIM_NOW) and pop.body(youngest) is None
    assert pop.visible(youngest, SIM_NOW + 60)
    assert pop.body_at(youngest, SIM_NOW + 60) is not None
    assert pop.visible(pop.id_at(1000), SIM_NOW)


def test_body_mix_is_realistic(big_bodies: list[dict[str, Any]]) -> None:
    bodies = big_bodies
    states = collections.Counter(b["state"] for b in bodies)
    assert states["disconnected"] > 0.95 * len(bodies)
    assert states["answered"] and states["initiated"] and states["queued"]
    causes = collections.Counter(b.get("disconnectCause") for b in bodies)
    assert set(DOCUMENTED_CAUSES) <= set(causes)
    assert causes.most_common(1)[0][0] == "hangup"
    assert set(causes) & set(UNDOCUMENTED_CAUSES)
    assert {b["direction"] for b in bodies} == {"inbound", "outbound"}

    inbound = [b for b in bodies if b["direction"] == "inbound"]
    outbound = [b for b in bodies if b["direction"] == "outbound"]
    shaken = [b["stirShaken"] for b in inbound if b.get("stirShaken") is not None]
    assert any(b.get("stirShaken", 0) is None for b in inbound)  # null on some inbound
    assert {s.get("verstat") for s in shaken} == {
        "TN-Validation-Passed", "TN-Validation-Failed", "Tn-Validation-Passed", None}
    assert {s["attestationIndicator"] for s in shaken} == {"A", "B", "C"}
    assert any("originatingId" in s for s in shaken)
    assert any(set(s) - {"verstat", "attestationIndicator", "originatingId"} for s in shaken)
    assert all(b.get("stirShaken") is None and b.get("identity") is None for b in outbound)
    assert any(b.get("identity") for b in inbound)

    by_id = {b["callId"] for b in bodies}
    parents = [b for b in bodies if b.get("parentCallId")]
    assert parents and all(b["direction"] == "outbound" for b in parents)
    assert all(is_valid_call_id(b["parentCallId"]) for b in parents)
    assert any(b["parentCallId"] in by_id for b in parents)
    assert all(b.get("enqueuedTime") for b in outbound)
    assert all(b.get("enqueuedTime") is None for b in inbound)
    for b in bodies:
        if b["state"] == "queued":
            assert b.get("startTime") is None and b["direction"] == "outbound"
        else:
            assert b["startTime"] is not None
        errored = b.get("disconnectCause") == "error"
        assert bool(b.get("errorMessage")) == errored and bool(b.get("errorId")) == errored
        if b["state"] != "disconnected":
            assert b.get("endTime") is None and b.get("disconnectCause") is None
    assert any(set(b) - KNOWN_FIELDS for b in bodies)  # unknown top-level fields
    assert any(set(b) < KNOWN_FIELDS for b in bodies)  # null fields left out


def test_only_recent_calls_are_still_active(big_pop: Population) -> None:
    t = now_ms(big_pop)
    for i in visible_indices(big_pop):
        f = big_pop.facts(i)
        if f.state_at(t) != "disconnected":
            assert t - f.created_ms < 5 * 3_600_000
        if t - f.created_ms > 86_400_000:
            assert f.state_at(t) == "disconnected"


def test_bodies_validate_against_the_official_schema(big_bodies: list[dict[str, Any]]) -> None:
    for body in big_bodies:
        assert_call_state(body)


def test_export_ids_csv_and_parquet(tmp_path: Path) -> None:
    pop = Population(config(calls=1500))
    expected = list(pop.ids())
    assert pop.export_ids(tmp_path / "ids.csv") == 1500
    with (tmp_path / "ids.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["callId"] and [r[0] for r in rows[1:]] == expected
    assert pop.export_ids(tmp_path / "ids.parquet") == 1500
    table = pq.read_table(tmp_path / "ids.parquet")
    assert table.column_names == ["callId"] and str(table.schema.field("callId").type) == "string"
    assert table.column("callId").to_pylist() == expected
    with pytest.raises(ValueError):
        pop.export_ids(tmp_path / "ids.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.csv", "ids.parquet"]


# Get Call State ----------------------------------------------------------------------------
async def test_served_bodies_equal_population_and_validate(
        sim: Simulator, session: aiohttp.ClientSession) -> None:
    pop = sim.population
    for index in visible_indices(pop)[::97]:
        call_id = pop.id_at(index)
        async with session.get(call_url(sim, call_id), headers=BASIC) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            body = orjson.loads(await resp.read())
        assert body == pop.body(call_id)
        assert body["callId"] == call_id and body["accountId"] == "9900000"
        assert_call_state(body)


async def test_not_found_unknown_expired_and_young(
        sim: Simulator, session: aiohttp.ClientSession) -> None:
    pop = sim.population
    unknown = "c-15ac29a2-1331029c-2cb0-4a07-b215-b22865662d85"
    expired = pop.id_at(0)
    young = pop.id_at(len(pop) - 1)
    for call_id in (unknown, "c-abc", expired, young):
        status, body = await get_json(session, call_url(sim, call_id), headers=BASIC)
        assert status == 404
        assert body == {"type": "validation", "description": f"Call [{call_id}] not found",
                        "id": None}
        API_ERROR.validate(body)
    sim.advance(sim.config.visibility_delay)
    status, body = await get_json(session, call_url(sim, young), headers=BASIC)
    assert status == 200 and body == pop.body(young)
    assert sim.stats.requests_by_status == {404: 4, 200: 1}


async def test_state_moves_on_with_the_clock(session: aiohttp.ClientSession) -> None:
    async with Simulator(config(calls=20_000, seed=3)) as sim:
        pop = sim.population
        t = now_ms(pop)
        active = next(i for i in visible_indices(pop) if pop.facts(i).state_at(t) != "disconnected")
        call_id = pop.id_at(active)
        status, before = await get_json(session, call_url(sim, call_id), headers=BASIC)
        assert status == 200 and before["state"] != "disconnected"
        sim.advance((pop.facts(active).end_ms - t) / 1000 + 1)
        status, after = await get_json(session, call_url(sim, call_id), headers=BASIC)
        assert status == 200 and after["state"] == "disconnected"
        assert after == pop.body(call_id) and after["endTime"] == after["lastUpdate"]
        # ...and 7 days after hang-up it is gone.
        sim.advance(RETENTION_MS / 1000)
        status, _ = await get_json(session, call_url(sim, call_id), headers=BASIC)
        assert status == 404


# authentication ------------------------------------------------------------------------------
async def test_oauth2_token_then_bearer(sim: Simulator, session: aiohttp.ClientSession) -> None:
    async with session.post(sim.token_url, data={"grant_type": "client_credentials"},
                            headers=basic("sim-client", "sim-secret")) as resp:
        assert resp.status == 200
        token = await resp.json()
    assert token["token_type"] == "bearer" and token["expires_in"] == 3600
    call_id = sim.population.id_at(1000)
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    status, body = await get_json(session, call_url(sim, call_id), headers=headers)
    assert status == 200 and body["callId"] == call_id
    assert sim.stats.tokens_issued == 1


async def test_token_endpoint_refuses_bad_clients_and_grants(
        sim: Simulator, session: aiohttp.ClientSession) -> None:
    form = {"grant_type": "client_credentials"}
    for headers in (basic("sim-client", "wrong"), basic("x", "sim-secret"), BASIC, {}):
        async with session.post(sim.token_url, data=form, headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "invalid_client"
    good = basic("sim-client", "sim-secret")
    for bad_form in ({"grant_type": "password"}, {}):
        async with session.post(sim.token_url, data=bad_form, headers=good) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == "unsupported_grant_type"
    assert sim.stats.tokens_issued == 0
    assert sim.stats.token_requests == 6


async def test_expired_token_is_refused(sim: Simulator, session: aiohttp.ClientSession) -> None:
    token = await fetch_token(session, sim)
    url = call_url(sim, sim.population.id_at(1000))
    headers = {"Authorization": f"Bearer {token}"}
    sim.advance(3599)
    assert (await get_json(session, url, headers=headers))[0] == 200
    sim.advance(1)
    status, body = await get_json(session, url, headers=headers)
    assert status == 401
    assert body == {"type": "authentication-error",
                    "description": "The credentials provided were invalid", "id": None}
    fresh = await fetch_token(session, sim)
    assert (await get_json(session, url, headers={"Authorization": f"Bearer {fresh}"}))[0] == 200
    assert sim.stats.tokens_issued == 2


async def test_bad_credentials_get_401(sim: Simulator, session: aiohttp.ClientSession) -> None:
    url = call_url(sim, sim.population.id_at(1000))
    attempts: list[dict[str, Any]] = [
        {}, {"headers": basic("sim-user", "nope")},
        {"headers": basic("sim-client", "sim-secret")},  # client creds are not Basic API creds
        {"headers": {"Authorization": "Bearer not-a-token"}},
        {"headers": {"Authorization": "Basic !!!"}},
    ]
    for kwargs in attempts:
        status, body = await get_json(session, url, **kwargs)
        assert status == 401, kwargs
        assert body["type"] == "authentication-error"
        API_ERROR.validate(body)
    status, _ = await get_json(session, list_url(sim))
    assert status == 401
    assert sim.stats.requests_by_status == {401: 6}


async def test_other_account_gets_403(sim: Simulator, session: aiohttp.ClientSession) -> None:
    call_id = sim.population.id_at(1000)
    status, body = await get_json(session, call_url(sim, call_id, account="1234567"), headers=BASIC)
    assert status == 403
    assert body == {"type": "authorization-error", "description": "Access is denied", "id": None}
    status, _ = await get_json(session, f"{sim.base_url}/accounts/1234567/calls", headers=BASIC)
    assert status == 403


# rate limit ------------------------------------------------------------------------------
async def test_burst_over_the_rate_gets_429_with_retry_after(
        session: aiohttp.ClientSession) -> None:
    async with Simulator(config(rate=5)) as sim:
        url = call_url(sim, sim.population.id_at(1000))

        async def one() -> tuple[int, str | None, bytes]:
            async with session.get(url, headers=BASIC) as resp:
                return resp.status, resp.headers.get("Retry-After"), await resp.read()

        results = await asyncio.gather(*(one() for _ in range(20)))
        statuses = collections.Counter(status for status, _, _ in results)
        assert statuses == {200: 5, 429: 15}
        for status, retry_after, body in results:
            if status == 429:
                assert retry_after == "1"  # whole seconds, at least 1
                assert orjson.loads(body) == {
                    "type": "error", "description": "Account call creation rate limit exceeded",
                    "id": ""}
        assert sim.stats.throttled == 15
        assert sim.stats.max_window_requests == 5
        assert sim.stats.requests_by_status == {200: 5, 429: 15}


async def test_sliding_window_never_admits_more_than_the_rate(
        session: aiohttp.ClientSession) -> None:
    async with Simulator(config(rate=40)) as sim:
        url = call_url(sim, sim.population.id_at(1000))
        deadline = time.monotonic() + 1.3
        statuses: collections.Counter[int] = collections.Counter()

        async def worker() -> None:
            while time.monotonic() < deadline:
                async with session.get(url, headers=BASIC) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

        await asyncio.gather(*(worker() for _ in range(8)))
        assert statuses[429] > 0
        assert 40 <= statuses[200] <= 80  # 1.3 s of a 40/s sliding window
        assert sim.stats.max_window_requests == 40


async def test_retry_after_as_http_date(session: aiohttp.ClientSession) -> None:
    async with Simulator(config(rate=1, retry_after_http_date=True)) as sim:
        url = call_url(sim, sim.population.id_at(1000))
        async with session.get(url, headers=BASIC) as resp:
            assert resp.status == 200
        async with session.get(url, headers=BASIC) as resp:
            assert resp.status == 429
            retry_after = resp.headers["Retry-After"]
        when = email.utils.parsedate_to_datetime(retry_after).timestamp()
        assert time.time() - 1 <= when <= time.time() + 2


async def test_window_peak_is_counted_without_a_limit(
        sim: Simulator, session: aiohttp.ClientSession) -> None:
    url = call_url(sim, sim.population.id_at(1000))
    started = time.monotonic()
    await asyncio.gather(*(get_json(session, url, headers=BASIC) for _ in range(30)))
    if time.monotonic() - started < 1.0:  # all inside one second, as on any sane machine
        assert sim.stats.max_window_requests == 30


# faults ------------------------------------------------------------------------------------
async def outcome(session: aiohttp.ClientSession, url: str,
                  client_timeout: float | None = None) -> str:
    """What the client saw: the status (``-cut`` when the JSON is broken) or the error."""
    try:
        async with session.get(url, headers=BASIC,
                               timeout=aiohttp.ClientTimeout(total=client_timeout)) as resp:
            body = await resp.read()
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                return f"{resp.status}-cut"
            return str(resp.status)
    except aiohttp.ClientError as exc:
        return type(exc).__name__
    except TimeoutError:
        return "timeout"


async def test_error_rate_gives_500_and_503(session: aiohttp.ClientSession) -> None:
    async with Simulator(config(error_rate=1.0)) as sim:
        seen: collections.Counter[int] = collections.Counter()
        for index in range(1000, 1030):
            status, body = await get_json(session, call_url(sim, sim.population.id_at(index)),
                                          headers=BASIC)
            seen[status] += 1
            API_ERROR.validate(body)
            assert body == (
                {"type": "internal-error", "description": "An unknown internal error occurred",
                 "id": None} if status == 500 else
                {"type": "system-overloaded", "description": "Managing too many concurrent calls",
                 "id": None})
        assert set(seen) == {500, 503}


async def test_reset_drops_the_connection(session: aiohttp.ClientSession) -> None:
    async with Simulator(config(reset_rate=1.0)) as sim:
        urls = [call_url(sim, sim.population.id_at(i)) for i in range(1000, 1020)]
        seen = collections.Counter([await outcome(session, url) for url in urls])
        assert set(seen) == {"ServerDisconnectedError", "ClientPayloadError"}
        # aiohttp itself retries a request once when a reused connection drops before the
        # headers, so the server may see more than 20: every one was dropped.
        assert sim.stats.resets == sim.stats.total_requests >= 20
        assert sim.stats.requests_by_status == {}


async def test_truncate_cuts_the_json_body(session: aiohttp.ClientSession) -> None:
    async with Simulator(config(truncate_rate=1.0)) as sim:
        for index in range(1000, 1010):
            call_id = sim.population.id_at(index)
            async with session.get(call_url(sim, call_id), headers=BASIC) as resp:
                assert resp.status == 200
                body = await resp.read()
            full = orjson.dumps(sim.population.body(call_id))
            assert 0 < len(body) < len(full) and full.startswith(body)
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(body)
        assert sim.stats.truncated == 10


async def test_slow_requests_stall_but_never_block_shutdown(
        session: aiohttp.ClientSession) -> None:
    sim = Simulator(config(slow_rate=1.0, slow_seconds=60))
    await sim.start()
    try:
        url = call_url(sim, sim.population.id_at(1000))
        assert await outcome(session, url, client_timeout=0.3) == "timeout"
        assert sim.stats.slow == 1 and sim.stats.in_flight == 1
    finally:
        started = time.monotonic()
        await sim.stop()
        assert time.monotonic() - started < 1.5
    assert sim.stats.in_flight == 0


async def test_faults_are_deterministic_whatever_the_order(
        session: aiohttp.ClientSession) -> None:
    cfg = config(error_rate=0.2, reset_rate=0.1, truncate_rate=0.1)
    ids = [Population(cfg).id_at(i) for i in range(1000, 1040)]
    results: list[dict[tuple[str, int], str]] = []
    for order in (ids, ids[::-1]):
        async with Simulator(cfg) as sim:
            seen: dict[tuple[str, int], str] = {}
            for n in range(2):
                for call_id in order:
                    seen[call_id, n] = await outcome(session, call_url(sim, call_id))
            results.append(seen)
    assert results[0] == results[1]
    kinds = collections.Counter(results[0].values())
    assert kinds["200"] > 30 and kinds["200-cut"] and (kinds["500"] + kinds["503"])
    assert kinds["ServerDisconnectedError"] + kinds["ClientPayloadError"]


def test_latency_distribution_has_the_mean_and_a_spread() -> None:
    samples = [latency_seconds(50.0, (k + 0.5) / 20_000) for k in range(20_000)]
    mean = sum(samples) / len(samples)
    spread = math.sqrt(sum((s - mean) ** 2 for s in samples) / len(samples))
    assert 0.045 < mean < 0.055
    assert spread / mean > 0.4
    assert latency_seconds(0.0, 0.5) == 0.0


async def test_latency_is_applied_per_request(session: aiohttp.ClientSession) -> None:
    cfg = config(latency_ms=25)
    planner = FaultPlanner(cfg)
    async with Simulator(cfg) as sim:
        planned, measured = [], []
        for index in range(1000, 1015):
            call_id = sim.population.id_at(index)
            planned.append(planner.next(call_id).latency)
            started = time.perf_counter()
            assert await outcome(session, call_url(sim, call_id)) == "200"
            measured.append(time.perf_counter() - started)
    assert max(planned) / min(planned) > 1.5  # not constant
    for want, got in zip(planned, measured, strict=True):
        assert got >= want - 0.003


# List Calls --------------------------------------------------------------------------------
async def list_all(session: aiohttp.ClientSession, url: str | yarl.URL,
                   params: dict[str, str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """Follow Link headers; return (ids, page sizes, link URLs)."""
    ids: list[str] = []
    sizes: list[int] = []
    links: list[str] = []
    next_url: str | yarl.URL | None = url
    while next_url is not None:
        async with session.get(next_url, params=params, headers=BASIC) as resp:
            assert resp.status == 200, await resp.text()
            page = orjson.loads(await resp.read())
            link = resp.headers.get("Link")
        params = None  # the Link URL carries everything
        sizes.append(len(page))
        ids.extend(b["callId"] for b in page)
        for body in page[:3]:
            assert_call_state(body)
        if link is None:
            next_url = None
        else:
            match = re.fullmatch(r'<(http://[^>]+)>; rel="next"', link)
            assert match, link
            links.append(match.group(1))
            next_url = yarl.URL(match.group(1), encoded=True)
    return ids, sizes, links


async def test_list_calls_pages_oldest_first_without_expired_or_young(
        sim: Simulator, session: aiohttp.ClientSession) -> None:
    pop = sim.population
    expected = [pop.id_at(i) for i in visible_indices(pop)]
    ids, sizes, links = await list_all(session, list_url(sim))
    assert ids == expected
    assert sizes[0] == 1000 and len(sizes) == math.ceil(len(expected) / 1000)
    assert all(link.startswith(sim.url) for link in links)
    assert pop.id_at(0) not in ids and pop.id_at(len(pop) - 1) not in ids
    starts = [pop.facts(i).created_ms for i in visible_indices(pop)]
    assert starts == sorted(starts)
    sim.advance(60)  # the young calls become visible, and are listed last
    ids_later, _, _ = await list_all(session, list_url(sim), {"pageSize": "10000"})
    assert ids_later[-1] == pop.id_at(len(pop) - 1)
    assert sim.stats.list_requests == len(sizes) + 1


async def test_list_calls_filters(sim: Simulator, session: aiohttp.ClientSession) -> None:
    pop = sim.population
    bodies = [b for b in (pop.body(c) for c in pop.ids()) if b is not None]
    to = next(b["to"] for b in bodies if b["direction"] == "inbound")
    from_ = next(b["from"] for b in bodies if b["direction"] == "inbound")
    started = sorted(b["startTime"] for b in bodies if b.get("startTime"))
    lo, hi = started[100], started[400]
    cases: list[tuple[dict[str, str], list[str]]] = [
        ({"to": to}, [b["callId"] for b in bodies if b["to"] == to]),
        ({"from": from_}, [b["callId"] for b in bodies if b["from"] == from_]),
        ({"disconnectCause": "busy"},
         [b["callId"] for b in bodies if b.get("disconnectCause") == "busy"]),
        ({"minStartTime": lo, "maxStartTime": hi},
         [b["callId"] for b in bodies if b.get("startTime") and lo <= b["startTime"] <= hi]),
        ({"minStartTime": lo, "disconnectCause": "hangup", "pageSize": "7"},
         [b["callId"] for b in bodies if b.get("startTime") and lo <= b["startTime"]
          and b.get("disconnectCause") == "hangup"]),
    ]
    results = []
    for params, expected in cases:
        ids, _, links = await list_all(session, list_url(sim), params)
        assert ids == expected and expected, params
        assert len(ids) < len(bodies)
        for link in links:  # every filter survives in the Link URL, '+' included
            query = yarl.URL(link, encoded=True).query
            for name, value in params.items():
                assert query[name] == value
        results.append(ids)
    # Both bounds are inclusive: the calls that started exactly at lo and hi are listed.
    edges = {b["callId"] for b in bodies if b.get("startTime") in (lo, hi)}
    assert edges and edges <= set(results[3])


async def test_list_calls_older_than_retention_is_an_empty_array(
        sim: Simulator, session: aiohttp.ClientSession) -> None:
    status, body = await get_json(session, list_url(sim), headers=BASIC,
                                  params={"maxStartTime": "2020-01-01T00:00:00Z"})
    assert status == 200 and body == []


async def test_list_calls_rejects_bad_parameters(
        sim: Simulator, session: aiohttp.ClientSession) -> None:
    for params in ({"pageSize": "0"}, {"pageSize": "10001"}, {"pageSize": "ten"},
                   {"pageToken": "garbage"}, {"minStartTime": "yesterday"},
                   {"maxStartTime": "2022-13-01"}):
        status, body = await get_json(session, list_url(sim), headers=BASIC, params=params)
        assert status == 400, params
        assert body["type"] == "validation" and body["id"] is None
        API_ERROR.validate(body)
    # A page token only works with the filters it was issued for.
    async with session.get(list_url(sim), headers=BASIC, params={"pageSize": "5"}) as resp:
        token = yarl.URL(re.findall(r"<([^>]+)>", resp.headers["Link"])[0]).query["pageToken"]
    status, _ = await get_json(session, list_url(sim), headers=BASIC,
                               params={"pageToken": token, "disconnectCause": "busy"})
    assert status == 400
    status, body = await get_json(session, list_url(sim), headers=BASIC,
                                  params={"pageToken": token, "pageSize": "10000"})
    assert status == 200 and len(body) > 5


async def test_list_calls_returns_at_most_10000_per_query(
        session: aiohttp.ClientSession) -> None:
    cfg = config(calls=13_000, bursts=(Burst(seconds_ago=7200, calls=11_000, duration=300),))
    async with Simulator(cfg) as sim:
        ids, sizes, _ = await list_all(session, list_url(sim), {"pageSize": "3000"})
        assert sizes == [3000, 3000, 3000, 1000] and len(set(ids)) == 10_000
        ids, sizes, links = await list_all(session, list_url(sim), {"pageSize": "10000"})
        assert sizes == [10_000] and links == []
        assert ids == [sim.population.id_at(i) for i in visible_indices(sim.population)][:10_000]


# stats ---------------------------------------------------------------------------------------
async def test_stats_endpoint_and_reset(sim: Simulator, session: aiohttp.ClientSession) -> None:
    pop = sim.population
    ok, missing = pop.id_at(1000), pop.id_at(0)
    await get_json(session, call_url(sim, ok), headers=BASIC)
    await get_json(session, call_url(sim, ok), headers=BASIC)
    await get_json(session, call_url(sim, missing), headers=BASIC)
    await get_json(session, call_url(sim, "c-nobody"))  # 401 still counts for the id
    await get_json(session, list_url(sim), headers=BASIC, params={"pageSize": "1"})
    await fetch_token(session, sim)
    stats = sim.stats
    assert isinstance(stats, SimStats)
    assert stats.served_by_id == {ok: 2, missing: 1, "c-nobody": 1}
    assert stats.requests_by_status == {200: 3, 404: 1, 401: 1}
    assert stats.total_requests == 5 and stats.list_requests == 1 and stats.tokens_issued == 1
    assert stats.max_in_flight == 1 and stats.in_flight == 0
    status, remote = await get_json(session, f"{sim.url}/_sim/stats")
    assert status == 200 and remote == json.loads(json.dumps(stats.as_dict()))
    assert remote["requests_by_status"] == {"200": 3, "401": 1, "404": 1}
    assert remote["served_by_id"][ok] == 2
    async with session.post(f"{sim.url}/_sim/reset") as resp:
        assert resp.status == 200
    assert stats.total_requests == 0 and not stats.served_by_id and not stats.requests_by_status
    assert sim.stats is stats
    sim.reset_stats()
    status, remote = await get_json(session, f"{sim.url}/_sim/stats", params={"ids": "0"})
    assert remote["total_requests"] == 0 and remote["served_by_id"] == {}


async def test_max_in_flight_counts_concurrent_requests(session: aiohttp.ClientSession) -> None:
    async with Simulator(config(latency_ms=150)) as sim:
        urls = [call_url(sim, sim.population.id_at(i)) for i in range(1000, 1010)]
        await asyncio.gather(*(outcome(session, url) for url in urls))
        assert 5 <= sim.stats.max_in_flight <= 10
        assert sim.stats.in_flight == 0


def test_refuses_non_loopback_host() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        Simulator(config(), host="0.0.0.0")
    Simulator(config(), host="::1")
    Simulator(config(), host="localhost")


# command line ------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_cli_serves_json_line_and_stops_cleanly(
        session: aiohttp.ClientSession, stop_signal: signal.Signals) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "auditor.simulator", "--json", "--calls", "500", "--seed", "5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(), cwd=ROOT)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        info = json.loads(line)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/v2", info["base_url"])
        assert info["token_url"].endswith("/api/v1/oauth2/token")
        assert (info["account_id"], info["client_id"], info["client_secret"]) == (
            "9900000", "sim-client", "sim-secret")
        assert (info["username"], info["password"]) == ("sim-user", "sim-pass")
        pop = Population(SimConfig(calls=500, seed=5, now=info["now"]))
        call_id = pop.id_at(250)
        url = f"{info['base_url']}/accounts/9900000/calls/{call_id}"
        status, body = await get_json(session, url, headers=BASIC)
        assert status == 200 and body["callId"] == call_id
    finally:
        if proc.returncode is None:
            proc.send_signal(stop_signal)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    assert out == b""


async def test_cli_refuses_non_loopback_and_exports(tmp_path: Path) -> None:
    async def cli(*args: str) -> tuple[int | None, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "auditor.simulator", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(), cwd=ROOT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out, err

    rc, out, err = await cli("--host", "0.0.0.0")
    assert rc == 2 and out == b""
    assert len(err.decode().strip().splitlines()) == 1 and "non-loopback" in err.decode()
    rc, _, err = await cli("--calls", "300", "--seed", "4", "--export-ids",
                           str(tmp_path / "ids.csv"), "--export-only")
    assert rc == 0, err.decode()
    with (tmp_path / "ids.csv").open() as f:
        assert [row["callId"] for row in csv.DictReader(f)] == list(
            Population(SimConfig(calls=300, seed=4)).ids())


async def test_served_by_id_records_the_raw_path_segment(
        sim: Simulator, session: aiohttp.ClientSession) -> None:
    url = yarl.URL(f"{list_url(sim)}/c-..%2F..%2Fadmin", encoded=True)
    status, body = await get_json(session, url, headers=BASIC)
    assert status == 404 and body["description"] == "Call [c-../../admin] not found"
    assert sim.stats.served_by_id == {"c-..%2F..%2Fadmin": 1}


def test_clock_is_frozen_in_process_and_can_follow_real_time() -> None:
    frozen = Population(config())
    assert frozen.now() == frozen.now() == SIM_NOW
    frozen.clock.advance(5)
    assert frozen.now() == SIM_NOW + 5
    with pytest.raises(ValueError):
        frozen.clock.advance(-1)
    running = Population(config(frozen_clock=False))
    first = running.now()
    assert SIM_NOW <= first <= running.now()
    assert abs(Population(SimConfig(calls=10)).clock.anchor - time.time()) < 5


@pytest.mark.parametrize("bad", [
    {"error_rate": 0.6, "reset_rate": 0.6}, {"error_rate": -0.1}, {"rate": 0.5},
    {"calls": -1}, {"bursts": (Burst(seconds_ago=60, calls=3000),)}, {"token_ttl": 0},
])
def test_inconsistent_configs_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        config(**bad)
