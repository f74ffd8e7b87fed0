"""List Calls sweeps (``auditor discover``): real HTTP to the simulator, real Parquet back."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from auditor.config import AuditConfig, BasicCredentials, Secret
from auditor.connection import connect
from auditor.discover import Discover
from auditor.listing import (
    DAY_MS,
    LIST_CAP,
    ListFilters,
    Window,
    format_ms,
    split_window,
    sweep,
)
from auditor.records import Outcome
from auditor.simulator import Burst, Population, SimConfig, Simulator
from auditor.sink import read_dataset
from auditor.verify import verify_dataset
from tests.conftest import SIM_NOW
from tests.test_cli import auditor, sim_env
from tests.test_pipeline import config_for


def job_config(sim: Simulator, output: Path, **overrides: Any) -> AuditConfig:
    """A discover/nightly job against *sim*: no input files, the ids come from listing."""
    return config_for(sim, [], output, **{"timeout": 10.0, **overrides})


def started_in(pop: Population, now_ms: int, window: Window) -> dict[str, int]:
    """The truth: id -> start ms of every call List Calls must return for *window*."""
    found: dict[str, int] = {}
    for index in range(len(pop)):
        facts = pop.facts(index)
        if (
            pop.visible_facts(facts, now_ms)
            and facts.start_ms <= now_ms
            and window.start_ms <= facts.start_ms <= window.end_ms
        ):
            found[pop.id_at(index)] = facts.start_ms
    return found


# A day with more than 25,000 calls, two bursts of more than 10,000 calls within one minute
# each, and the day before it (calls that must not be listed).
BURSTY_DAY = SimConfig(
    calls=40_000,
    seed=7,
    now=SIM_NOW,
    span_days=2.0,
    bursts=(
        Burst(seconds_ago=60_000, calls=11_000, duration=50),
        Burst(seconds_ago=20_000, calls=10_500, duration=40),
    ),
)


async def test_bursty_day_every_call_exactly_once_in_few_requests(tmp_path: Path) -> None:
    async with Simulator(BURSTY_DAY) as sim:
        now_ms = sim.clock.now_ms()
        window = Window(now_ms - DAY_MS, now_ms)
        out = tmp_path / "out"
        summary = await Discover(job_config(sim, out), window, ListFilters()).run()
        assert summary.exit_code == 0, summary.error

        truth = started_in(sim.population, now_ms, window)
        starts = sorted(truth.values())
        densest_minute = max(
            j - i for i, j in _spans(starts, 60_000)
        )  # the premise: bursts over the cap inside one minute
        assert len(truth) > 25_000 and densest_minute > LIST_CAP
        outside = sum(
            1 for i in range(len(sim.population))
            if sim.population.facts(i).start_ms < window.start_ms
        )
        assert outside > 5_000  # the day before exists, and must not be listed

        table = read_dataset(out)
        listed = Counter(table.column("call_id").to_pylist())
        assert max(listed.values()) == 1  # nothing counted twice across split windows
        assert set(listed) == set(truth)  # every call in the window, nothing outside it
        assert set(table.column("source").to_pylist()) == {"list"}
        assert verify_dataset(out, sim.population).clean  # rows equal the service's bodies

        requests = sim.stats.list_requests
        minimum = math.ceil(len(truth) / LIST_CAP)
        assert summary.details["listing"]["capped"] >= 2
        assert requests == summary.requests == summary.details["listing"]["requests"]
        assert requests <= 3 * minimum, (requests, minimum)  # measured: 7 for 29,691 calls
        assert not sim.stats.served_by_id  # no per-call GET at all
        per_call = summary.details["requests_per_listed_call"]
        assert per_call == pytest.approx(requests / len(truth), rel=1e-2)
        assert per_call < 0.001


def _spans(starts: list[int], width: int) -> list[tuple[int, int]]:
    """(i, j) such that starts[i:j] all lie within *width* ms of starts[i]."""
    spans, j = [], 0
    for i, start in enumerate(starts):
        while j < len(starts) and starts[j] - start < width:
            j += 1
        spans.append((i, j))
    return spans


async def test_paging_follows_links_through_faults_and_the_cap() -> None:
    """Small pages: the cap is met across pages; 5xx, resets and cut bodies are retried."""
    config = SimConfig(
        calls=13_000, seed=5, now=SIM_NOW,
        bursts=(Burst(seconds_ago=7200, calls=11_000, duration=60),),
        error_rate=0.1, reset_rate=0.03, truncate_rate=0.03,
    )
    async with Simulator(config) as sim:
        now_ms = sim.clock.now_ms()
        window = Window(now_ms - 8 * DAY_MS, now_ms)
        got: list[str] = []
        pieces: list[Window] = []

        async def collect(piece: Window, outcomes: list[Outcome]) -> None:
            pieces.append(piece)
            got.extend(o.call_id for o in outcomes)

        async with connect(job_config(sim, Path("unused"))) as conn:
            stats = await sweep(conn, window, collect, page_size=3000)
            retried = conn.stats.retried
        truth = started_in(sim.population, now_ms, window)
        assert sorted(got) == sorted(truth)
        assert stats.capped >= 1 and not stats.failed
        assert stats.pages > stats.queries  # Link: rel="next" was followed
        assert retried > 0 and stats.requests > stats.pages  # faults met and overcome
        assert sim.stats.list_requests == stats.requests
        ordered = sorted(pieces)
        assert all(a.end_ms + 1 == b.start_ms for a, b in itertools.pairwise(ordered))
        assert ordered[0].start_ms == window.start_ms and ordered[-1].end_ms == window.end_ms


async def test_filters_are_sent_encoded(tmp_path: Path) -> None:
    async with Simulator(SimConfig(calls=3000, seed=9, now=SIM_NOW)) as sim:
        now_ms = sim.clock.now_ms()
        window = Window(now_ms - 8 * DAY_MS, now_ms)
        pop = sim.population
        truth = started_in(pop, now_ms, window)
        bodies = {cid: pop.body(cid) or {} for cid in truth}
        caller = next(b["from"] for b in bodies.values() if b.get("direction") == "inbound")
        number = next(b["to"] for b in bodies.values() if b.get("direction") == "inbound")
        assert caller.startswith("+")
        cases = [
            (ListFilters(from_=caller), lambda b: b.get("from") == caller),
            (ListFilters(to=number), lambda b: b.get("to") == number),
            (ListFilters(disconnect_cause="busy"), lambda b: b.get("disconnectCause") == "busy"),
        ]
        async with connect(job_config(sim, tmp_path)) as conn:
            for filters, wanted in cases:
                got: list[str] = []

                async def collect(
                    piece: Window, outcomes: list[Outcome], into: list[str] = got
                ) -> None:
                    into.extend(o.call_id for o in outcomes)

                await sweep(conn, window, collect, filters)
                expected = [cid for cid, body in bodies.items() if wanted(body)]
                assert expected and sorted(got) == sorted(expected), filters


async def test_a_next_link_to_another_host_is_not_followed(tmp_path: Path) -> None:
    """Credentials go only to the API's origin; the window is reported as not listed."""
    start_ms = int(SIM_NOW * 1000) - 3_600_000
    body = [{"callId": "c-1a2b3c4d-0001", "startTime": format_ms(start_ms + 1000),
             "state": "disconnected"}]
    hosts: list[str] = []

    async def calls(request: web.Request) -> web.Response:
        hosts.append(request.host)
        return web.Response(
            body=orjson.dumps(body), content_type="application/json",
            headers={"Link": '<http://127.0.0.2:9/api/v2/accounts/9900000/calls?pageToken=x>; '
                             'rel="next"'},
        )

    app = web.Application()
    app.add_routes([web.get("/api/v2/accounts/{account}/calls", calls)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        config = AuditConfig(
            inputs=[], output=str(tmp_path / "out"), account_id="9900000",
            credentials=BasicCredentials("u", Secret("p")),
            base_url=f"http://127.0.0.1:{port}/api/v2", rate=None, progress=False,
        )
        summary = await Discover(config, Window(start_ms, start_ms + 7_200_000),
                                 ListFilters()).run()
    finally:
        await runner.cleanup()
    assert summary.exit_code == 1
    assert "another host" in str(summary.error)
    assert len(hosts) == 1  # asked once, not retried, never sent elsewhere
    assert read_dataset(tmp_path / "out").num_rows == 0  # an incomplete window is not written


def test_split_window_pieces_are_disjoint_and_cover_the_window() -> None:
    window = Window(1_000, 1_000_000)
    dense = list(range(1_000, 11_000))  # 10,000 calls in the first 10 s, one per ms
    pieces = split_window(window, dense)
    assert pieces[0] == Window(1_000, 9_999)  # the first 90 % of what was returned
    for a, b in itertools.pairwise(pieces):
        assert a.end_ms + 1 == b.start_ms
    rest = pieces[1:-1]  # after the re-queried part: each twice as long as the one before
    assert all(2 * (a.end_ms - a.start_ms + 1) == b.end_ms - b.start_ms + 1
               for a, b in itertools.pairwise(rest))
    assert pieces[-1].end_ms == window.end_ms
    assert len(pieces) < 12  # growing pieces reach the end fast after a burst
    assert split_window(Window(5, 5), [5] * LIST_CAP) == []  # one millisecond: cannot split
    # all calls at the very end: still two strictly smaller pieces
    assert split_window(Window(0, 9), [9] * LIST_CAP) == [Window(0, 4), Window(5, 9)]


async def test_cli_discover_and_bad_usage(tmp_path: Path) -> None:
    async with Simulator(SimConfig(calls=800, seed=2, now=SIM_NOW)) as sim:
        out = tmp_path / "out"
        as_of = format_ms(sim.clock.now_ms())
        common = ["--output", str(out), "--as-of", as_of, "--base-url", sim.base_url,
                  "--token-url", sim.token_url, "--no-progress"]
        code, _, err = await auditor("discover", "--since", "24h", *common, env=sim_env(sim))
        assert code == 0, err
        assert "List Calls:" in err and "requests per listed call" in err
        day = Window(sim.clock.now_ms() - DAY_MS, sim.clock.now_ms())
        assert sorted(read_dataset(out).column("call_id").to_pylist()) == sorted(
            started_in(sim.population, sim.clock.now_ms(), day)
        )
        # again over the same window: the calls that ended are not written twice
        code, _, err = await auditor("discover", "--since", "24h", *common, env=sim_env(sim))
        assert code == 0, err
        ids = read_dataset(out).column("call_id").to_pylist()
        assert len(ids) - len(set(ids)) < 40  # only calls still active are written again

        for args, message in (
            (["--since", "0h"], "--since"),
            (["--since", "yesterday"], "--since"),
            (["--start", "2026-06-09", "--end", "2026-06-01"], "ends before it starts"),
            (["--start", "last week"], "--start"),
            (["--since", "1h", "--end", "2026-06-01"], "--end"),
        ):
            code, _, err = await auditor("discover", *args, *common, env=sim_env(sim))
            assert code == 2, (args, err)
            assert message in err and len(err.strip().splitlines()) == 1, err
