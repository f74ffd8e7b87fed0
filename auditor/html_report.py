"""``auditor report DIR --html FILE``: one self-contained HTML page about a dataset.

No network, no CDN, no script: inline CSS and inline SVG charts, so the file can be
mailed, archived or opened offline.  Every figure is computed over the **newest row of
each call** (:func:`auditor.dataset.read_latest`), the same rule analysts' queries use,
and every chart has a table with the exact numbers beside it.

Sections (each a ``<section id=...>``): ``overview``, ``calls-per-hour`` (by UTC start
hour), ``disconnect-causes``, ``stir-shaken`` (verstat and attestation shares of inbound
calls), ``audit-status`` (status and source), ``failed-ids``.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from auditor import sink
from auditor.dataset import read_latest
from auditor.records import STATUS_FAILED, STATUSES

_HOUR_MS: Final = 3_600_000
_MAX_HOURS_CHARTED: Final = 24 * 60
#: Failed ids listed in full; beyond this the page says how many more there are.
MAX_FAILED_LISTED: Final = 1_000
_NONE: Final = "(none)"
_COLUMNS: Final = (
    "call_id", "direction", "start_time", "disconnect_cause", "stir_shaken_verstat",
    "stir_shaken_attestation", "status", "source", "http_status", "attempts", "fetched_at",
    "error",
)

_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1f2328;background:#fff}
h1{font-size:1.6rem;margin:0 0 .25rem}h2{font-size:1.2rem;margin:2rem 0 .5rem;
border-bottom:1px solid #d0d7de;padding-bottom:.25rem}h3{font-size:1rem;margin:1rem 0 .25rem}
.muted{color:#59636e}table{border-collapse:collapse;margin:.5rem 0}
th,td{padding:.2rem .6rem;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:.75rem;margin:1rem 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.5rem .9rem;min-width:9rem}
.card b{display:block;font-size:1.35rem}.row{display:flex;flex-wrap:wrap;gap:2rem}
svg{max-width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#1f2328}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
"""
_PALETTE: Final = ("#0969da", "#1a7f37", "#bf8700", "#cf222e", "#8250df", "#1b7c83",
                   "#bc4c00", "#57606a")


def write_report(directory: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Render the report of dataset *directory* into *target* (written atomically)."""
    source = Path(directory)
    if not source.is_dir():
        raise sink.OutputError(f"{source}: not an output directory")
    page = render(source)
    path = Path(target)
    try:
        sink.write_atomic(path, page.encode())
    except OSError as exc:
        raise sink.OutputError(f"{path}: cannot write the report ({exc.strerror})") from None
    return path


def render(directory: Path) -> str:
    """The report page of *directory* as one HTML string."""
    rows = sink.read_dataset(directory, ["call_id"]).num_rows
    latest = read_latest(directory, _COLUMNS)
    runs = sink.read_run_summaries(directory)
    body = "\n".join(
        (
            _overview(directory, latest, rows, len(runs)),
            _calls_per_hour(latest),
            _causes(latest),
            _stir_shaken(latest),
            _status(latest),
            _failed(latest),
        )
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>Call audit report: {_e(directory.name or str(directory))}</title>"
        f"<style>{_CSS}</style></head><body>\n"
        f"<h1>Call audit report</h1><p class=\"muted\">Dataset <code>{_e(str(directory))}</code>"
        f", generated {generated}. Figures use the newest row of each call.</p>\n"
        f"{body}\n</body></html>\n"
    )


# -- sections ---------------------------------------------------------------------------------


def _overview(directory: Path, latest: pa.Table, rows: int, runs: int) -> str:
    starts = latest.column("start_time")
    first, last = pc.min(starts).as_py(), pc.max(starts).as_py()
    span = f"{_when(first)} to {_when(last)}" if first is not None else "-"
    inbound = _count(pc.equal(latest.column("direction").cast(pa.string()), "inbound"))
    cards = [
        ("calls", latest.num_rows, "calls"),
        ("rows", rows, "rows (all runs)"),
        ("runs", runs, "runs"),
        ("inbound", inbound, "inbound calls"),
    ]
    html_cards = "".join(
        f'<div class="card" data-key="{key}"><b>{value:,}</b> {_e(label)}</div>'
        for key, value, label in cards
    )
    return (
        '<section id="overview"><h2>Overview</h2>'
        f'<div class="cards">{html_cards}</div>'
        f'<p class="muted">Start times from {_e(span)}.</p></section>'
    )


def _calls_per_hour(latest: pa.Table) -> str:
    starts = latest.column("start_time").drop_null()
    if len(starts) == 0:
        return _section("calls-per-hour", "Calls per hour", "<p>No call has a start time.</p>")
    hours = pc.divide(pc.cast(starts, pa.int64()), _HOUR_MS)
    counts = {item["values"]: item["counts"] for item in pc.value_counts(hours).to_pylist()}
    first, last = min(counts), max(counts)
    series = [(hour, counts.get(hour, 0)) for hour in range(first, last + 1)]
    peak_hour, peak = max(series, key=lambda item: item[1])
    chart = _hour_chart(series[-_MAX_HOURS_CHARTED:])
    if len(series) > _MAX_HOURS_CHARTED:
        chart += f'<p class="muted">The chart shows the last {_MAX_HOURS_CHARTED:,} hours.</p>'
    text = (
        f'<p><span data-key="with-start">{len(starts):,}</span> calls with a start time, '
        f"over {len(series):,} hours (UTC); busiest hour "
        f'<span data-key="peak-hour">{_hour(peak_hour)}</span> with '
        f'<span data-key="peak">{peak:,}</span> calls.</p>'
    )
    busiest = sorted(series, key=lambda item: (-item[1], item[0]))[:10]
    table = _table(("hour (UTC)", "calls"), [(_hour(h), n) for h, n in busiest], "busiest")
    return _section(
        "calls-per-hour", "Calls per hour", text + chart + "<h3>Busiest hours</h3>" + table
    )


def _causes(latest: pa.Table) -> str:
    ended = latest.filter(pc.is_valid(latest.column("disconnect_cause")))
    counts = _value_counts(ended.column("disconnect_cause"))
    if not counts:
        return _section("disconnect-causes", "Disconnect causes", "<p>No call has ended.</p>")
    return _section(
        "disconnect-causes",
        "Disconnect causes",
        f"<p>{ended.num_rows:,} ended calls.</p>"
        + _bars(counts)
        + _share_table(("cause", "calls", "share"), counts, "cause"),
    )


def _stir_shaken(latest: pa.Table) -> str:
    inbound = latest.filter(
        pc.and_(
            pc.equal(latest.column("direction").cast(pa.string()), "inbound"),
            pc.equal(latest.column("status").cast(pa.string()), "ok"),
        ).fill_null(False)
    )
    intro = (
        f'<p><span data-key="inbound">{inbound.num_rows:,}</span> inbound calls '
        "(STIR/SHAKEN is set on inbound calls only).</p>"
    )
    parts: list[str] = []
    if inbound.num_rows:
        for key, title, column in (
            ("verstat", "Verification status (verstat)", "stir_shaken_verstat"),
            ("attestation", "Attestation", "stir_shaken_attestation"),
        ):
            counts = _value_counts(inbound.column(column), keep_null=True)
            parts.append(
                f'<div data-key="{key}"><h3>{_e(title)}</h3>'
                + _bars(counts)
                + _share_table((key, "calls", "share"), counts, key)
                + "</div>"
            )
    return _section(
        "stir-shaken", "STIR/SHAKEN on inbound calls",
        intro + '<div class="row">' + "".join(parts) + "</div>",
    )


def _status(latest: pa.Table) -> str:
    counts = _value_counts(latest.column("status"))
    ordered = [(s, counts.pop(s)) for s in STATUSES if s in counts] + sorted(counts.items())
    sources = _value_counts(latest.column("source"), keep_null=True)
    return _section(
        "audit-status",
        "Audit status",
        _bars(ordered)
        + _share_table(("status", "calls", "share"), ordered, "status")
        + "<h3>Where the newest row came from</h3>"
        + _share_table(("source", "calls", "share"), list(sources.items()), "source"),
    )


def _failed(latest: pa.Table) -> str:
    failed = latest.filter(
        pc.equal(latest.column("status").cast(pa.string()), STATUS_FAILED).fill_null(False)
    )
    failed = failed.sort_by([("call_id", "ascending")])
    total = failed.num_rows
    if total == 0:
        return _section("failed-ids", "Failed ids",
                        '<p><span data-key="failed">0</span> failed ids.</p>')
    shown = failed.slice(0, MAX_FAILED_LISTED).to_pylist()
    body = [
        (row["call_id"], row["http_status"], row["attempts"], _when(row["fetched_at"]),
         row["error"] or "")
        for row in shown
    ]
    more = f" The first {MAX_FAILED_LISTED:,} are listed." if total > MAX_FAILED_LISTED else ""
    return _section(
        "failed-ids",
        "Failed ids",
        f'<p><span data-key="failed">{total:,}</span> ids whose newest fetch failed; the next '
        f"run fetches them again.{more}</p>"
        + _table(("call id", "HTTP", "attempts", "fetched at", "error"), body, "failed"),
    )


# -- pieces -----------------------------------------------------------------------------------


def _section(key: str, title: str, content: str) -> str:
    return f'<section id="{key}"><h2>{_e(title)}</h2>{content}</section>'


def _value_counts(column: pa.ChunkedArray, keep_null: bool = False) -> dict[str, int]:
    values = column.cast(pa.string())
    counts: dict[str, int] = {}
    for item in pc.value_counts(values).to_pylist():
        name = item["values"]
        if name is None and not keep_null:
            continue
        key = _NONE if name is None else str(name)
        counts[key] = counts.get(key, 0) + item["counts"]
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _count(mask: pa.ChunkedArray) -> int:
    return int(pc.sum(mask.fill_null(False)).as_py() or 0)


def _share_table(
    header: Sequence[str], counts: dict[str, int] | Sequence[tuple[str, int]], key: str
) -> str:
    items = list(counts.items()) if isinstance(counts, dict) else list(counts)
    total = sum(n for _, n in items) or 1
    rows = [(name, n, f"{100 * n / total:.1f}%") for name, n in items]
    return _table(header, rows, key)


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], key: str) -> str:
    head = "".join(
        f'<th class="n">{_e(h)}</th>' if i else f"<th>{_e(h)}</th>" for i, h in enumerate(header)
    )
    lines = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            if isinstance(value, int) and not isinstance(value, bool):
                cells.append(f'<td class="n" data-value="{value}">{value:,}</td>')
            elif i and isinstance(value, str) and value.endswith("%"):
                cells.append(f'<td class="n">{_e(value)}</td>')
            else:
                cells.append(f"<td>{_e('' if value is None else str(value))}</td>")
        lines.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table data-table="{_e(key)}"><thead><tr>{head}</tr></thead><tbody>' + "".join(
        lines
    ) + "</tbody></table>"


def _bars(counts: dict[str, int] | Sequence[tuple[str, int]]) -> str:
    """A horizontal bar chart, one bar per value, as inline SVG."""
    items = list(counts.items()) if isinstance(counts, dict) else list(counts)
    if not items:
        return ""
    items = items[:16]
    peak = max(n for _, n in items) or 1
    label_w, bar_w, row_h = 190, 360, 20
    height = row_h * len(items) + 4
    shapes = []
    for i, (name, n) in enumerate(items):
        y = 2 + i * row_h
        width = max(1.0, bar_w * n / peak) if n else 0.0
        color = _PALETTE[i % len(_PALETTE)]
        shapes.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{_e(name[:32])}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row_h - 6}" '
            f'fill="{color}"><title>{_e(name)}: {n:,}</title></rect>'
            f'<text x="{label_w + width + 6:.1f}" y="{y + 14}">{n:,}</text>'
        )
    total_w = label_w + bar_w + 70
    return (
        f'<svg viewBox="0 0 {total_w} {height}" '
        f'width="{total_w}" height="{height}" role="img">{"".join(shapes)}</svg>'
    )


def _hour_chart(series: Sequence[tuple[int, int]]) -> str:
    """Calls per hour as vertical bars, with day ticks, as inline SVG."""
    width, height, left, bottom, top = 1000, 220, 48, 28, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(n for _, n in series) or 1
    step = plot_w / len(series)
    shapes = [
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#8c959f"/>',
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak:,}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, (hour, n) in enumerate(series):
        x = left + i * step
        h = plot_h * n / peak
        shapes.append(
            f'<rect x="{x:.2f}" y="{top + plot_h - h:.2f}" width="{max(step - 0.6, 0.6):.2f}" '
            f'height="{h:.2f}" fill="#0969da"><title>{_hour(hour)}: {n:,} calls</title></rect>'
        )
        if hour % 24 == 0 or i == 0:
            day = datetime.fromtimestamp(hour * 3600, UTC).strftime("%m-%d %H:00")
            shapes.append(
                f'<line x1="{x:.2f}" y1="{top + plot_h}" x2="{x:.2f}" y2="{top + plot_h + 4}" '
                'stroke="#8c959f"/>'
                f'<text x="{x:.2f}" y="{top + plot_h + 17}">{day}</text>'
            )
    return (
        f'<svg viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="calls per hour">'
        f'{"".join(shapes)}</svg>'
    )


def _hour(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%d %H:00")


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _e(text: str) -> str:
    return html.escape(text, quote=True)
