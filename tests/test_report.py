"""``auditor report``: a self-contained HTML page, checked as written and as Chromium renders it."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from auditor import run_audit
from auditor.dataset import read_latest
from auditor.nightly import Nightly
from auditor.simulator import SimConfig, Simulator
from tests.conftest import SIM_NOW
from tests.test_cli import auditor
from tests.test_discover import job_config
from tests.test_nightly import write_ids
from tests.test_pipeline import config_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SECTIONS = {"overview", "calls-per-hour", "disconnect-causes", "stir-shaken", "audit-status",
            "failed-ids"}


class Facts(HTMLParser):
    """What a reader of the page sees: sections, cards, tables (first cell -> number)."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.keys: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.svgs = 0
        self._key: str | None = None
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and a.get("id"):
            self.sections.append(str(a["id"]))
        if tag == "svg":
            self.svgs += 1
        if a.get("data-key") and tag in ("div", "span"):
            self._key, self._text = str(a["data-key"]), []
        if tag == "table" and a.get("data-table"):
            self._table = str(a["data-table"])
            self.tables[self._table] = []
        if tag == "tr" and self._table is not None:
            self._row = []
        if tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("div", "span") and self._key is not None:
            self.keys[self._key] = " ".join("".join(self._text).split())
            self._key = None
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None and self._table is not None:
            if self._row:
                self.tables[self._table].append(self._row)
            self._row = None
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def counts(self, table: str) -> dict[str, int]:
        return {row[0]: int(row[1].replace(",", "")) for row in self.tables[table]}


def parse(page: str) -> Facts:
    facts = Facts()
    facts.feed(page)
    return facts


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two nightly runs, then a flaky `run` that leaves failed ids: a realistic dataset."""
    out = tmp_path_factory.mktemp("report") / "out"

    async def build() -> None:
        base = SimConfig(calls=2500, seed=51, now=SIM_NOW)
        async with Simulator(base) as sim:
            cfg = job_config(sim, out, partition_by="date")
            for _ in range(2):
                assert (await Nightly(cfg, None, 120.0, as_of=sim.now()).run()).exit_code == 0
                sim.advance(1800)
            expired = [sim.population.id_at(i) for i in range(80)]
        flaky = SimConfig(calls=2500, seed=51, now=SIM_NOW, error_rate=0.7)
        async with Simulator(flaky) as sim:
            sim.advance(3600)
            ids = write_ids(out.parent / "old.csv", expired)
            summary = await run_audit(config_for(sim, [ids], out, max_attempts=1,
                                                 partition_by="date"))
            assert summary.status_counts.get("failed", 0) > 10

    asyncio.run(build())
    return out


def expected(out: Path) -> dict[str, Any]:
    latest = read_latest(out)
    status = Counter(latest.column("status").cast(pa.string()).to_pylist())
    causes = Counter(c for c in latest.column("disconnect_cause").cast(pa.string()).to_pylist()
                     if c is not None)
    inbound = latest.filter(pc.and_(
        pc.equal(latest.column("direction").cast(pa.string()), "inbound"),
        pc.equal(latest.column("status").cast(pa.string()), "ok")).fill_null(False))
    verstat = Counter(v or "(none)" for v in
                      inbound.column("stir_shaken_verstat").cast(pa.string()).to_pylist())
    attestation = Counter(v or "(none)" for v in
                          inbound.column("stir_shaken_attestation").cast(pa.string()).to_pylist())
    failed = sorted(r["call_id"] for r in latest.select(["call_id", "status"]).to_pylist()
                    if r["status"] == "failed")
    hours = Counter(t.strftime("%Y-%m-%d %H:00")
                    for t in latest.column("start_time").to_pylist() if t is not None)
    return {"calls": latest.num_rows, "status": dict(status), "causes": dict(causes),
            "verstat": dict(verstat), "attestation": dict(attestation), "failed": failed,
            "hours": hours}


def check(facts: Facts, want: dict[str, Any]) -> None:
    assert set(facts.sections) >= SECTIONS
    assert facts.svgs >= 5  # calls per hour, causes, verstat, attestation, status
    assert facts.keys["calls"] == f"{want['calls']:,} calls"
    assert facts.counts("status") == want["status"]
    assert facts.counts("cause") == want["causes"]
    assert facts.counts("verstat") == want["verstat"]
    assert facts.counts("attestation") == want["attestation"]
    assert facts.keys["failed"] == f"{len(want['failed']):,}"
    assert [row[0] for row in facts.tables["failed"]] == want["failed"]
    hour, peak = max(sorted(want["hours"].items()), key=lambda kv: kv[1])
    assert facts.keys["peak"] == f"{peak:,}" and facts.keys["peak-hour"] == hour
    assert facts.keys["with-start"] == f"{sum(want['hours'].values()):,}"


async def test_report_has_every_section_and_the_dataset_numbers(
    dataset: Path, tmp_path: Path
) -> None:
    target = tmp_path / "report.html"
    code, _, err = await auditor("report", str(dataset), "--html", str(target))
    assert code == 0, err
    page = target.read_text()
    check(parse(page), expected(dataset))
    # self-contained: nothing to fetch, nothing to run
    assert not re.search(r"(?i)https?:|<script|<link|<img|<iframe|src=|href=|url\(|@import",
                         page)
    code, _, err = await auditor("report", str(tmp_path / "missing"), "--html", str(target))
    assert code == 2 and "not an output directory" in err


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package "
                    "'chromium'; .ci/run installs it), so the page cannot be rendered")
async def test_report_renders_in_headless_chromium(dataset: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    target = tmp_path / "report.html"
    code, _, err = await auditor("report", str(dataset), "--html", str(target))
    assert code == 0, err
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-extensions", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = target.resolve().as_uri()
    dom = await _chromium(CHROMIUM, *flags, "--dump-dom", url)
    check(parse(dom), expected(dataset))
    shot = tmp_path / "report.png"
    await _chromium(CHROMIUM, *flags, "--window-size=1200,3000", f"--screenshot={shot}", url)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # drawn, not blank


async def _chromium(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()
