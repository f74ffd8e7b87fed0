"""Command line: ``auditor run | discover | nightly | report | demo | summary | simulate``.

Exit codes: 0 all done, 1 some ids failed, 2 bad usage, input or output directory (always
before any request, or mid-stream for input that turns bad), 3 credentials refused,
4 the output could not be written mid-run (disk full), 130 / 143 stopped by SIGINT / SIGTERM.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

# First of our imports: runtime picks pyarrow's allocator, which must happen before pyarrow loads.
from auditor import __version__, runtime
from auditor.config import (
    DEFAULT_BASE_URL,
    DEFAULT_RATE,
    DEFAULT_TOKEN_URL,
    AuditConfig,
    ConfigError,
    credentials_from_env,
)
from auditor.console import live_progress, print_summary
from auditor.pipeline import EXIT_BAD_INPUT, Audit, Progress, RunSummary
from auditor.sink import OutputError
from auditor.sources import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auditor", description="Audit Bandwidth Voice API calls in bulk into Parquet."
    )
    parser.add_argument("--version", action="version", version=f"auditor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="audit the call ids in INPUT files into --output")
    run.add_argument("inputs", nargs="+", metavar="INPUT", help=".csv, .csv.gz, .parquet or -")
    run.add_argument("--output", "-o", required=True, metavar="DIR")
    run.add_argument(
        "--partition-by", choices=("none", "date"), default="none",
        help="'date': Hive folders call_date=YYYY-MM-DD (default none: flat part files)",
    )
    _add_run_options(run)

    demo = commands.add_parser("demo", help="the whole job against the built-in simulator")
    demo.add_argument("--output", "-o", default="auditor-demo-output", metavar="DIR")
    demo.add_argument("--calls", type=int, default=3000, help="simulated calls (default 3000)")
    demo.add_argument("--rate", type=float, default=400.0, help="req/s (default 400)")
    demo.add_argument("--no-progress", action="store_true")

    summary = commands.add_parser("summary", help="the run summary of an output dataset")
    summary.add_argument("directory", metavar="DIR")

    discover = commands.add_parser(
        "discover", help="list every call that started in a time window (List Calls)"
    )
    when = discover.add_mutually_exclusive_group(required=True)
    when.add_argument("--since", metavar="DURATION", help="the last DURATION: 24h, 90m, 7d")
    when.add_argument("--start", metavar="TS", help="window start (ISO 8601, inclusive)")
    discover.add_argument("--end", metavar="TS", help="window end (inclusive; default: now)")
    discover.add_argument("--output", "-o", required=True, metavar="DIR")
    discover.add_argument(
        "--to", default=None, metavar="NUMBER", help="only calls to this number or SIP URI"
    )
    discover.add_argument(
        "--from", dest="from_", default=None, metavar="NUMBER",
        help="only calls from this number or SIP URI (+ is sent encoded)",
    )
    discover.add_argument(
        "--disconnect-cause", default=None, metavar="CAUSE", help="only calls that ended so"
    )
    _add_api_options(discover)
    _add_job_options(discover, partition_default="none")

    nightly = commands.add_parser(
        "nightly", help="make DIR complete and fresh: list since the last run, then GET the rest"
    )
    nightly.add_argument("--output", "-o", required=True, metavar="DIR")
    nightly.add_argument(
        "--ids", metavar="FILE", default=None,
        help="also audit these ids (.csv/.csv.gz/.parquet) where the listing has not",
    )
    nightly.add_argument(
        "--settle", metavar="DURATION", default="15m",
        help="how far behind now the watermark stays, so late-visible and queued calls "
        "are listed by the next run (default 15m)",
    )
    _add_run_options(nightly)
    _add_job_options(nightly, partition_default="date", fresh=False)

    report = commands.add_parser("report", help="a self-contained HTML report of a dataset")
    report.add_argument("directory", metavar="DIR")
    report.add_argument("--html", required=True, metavar="FILE", help="where to write it")

    simulate = commands.add_parser("simulate", help="serve the Bandwidth Voice API simulator")
    from auditor.simulator import cli as simulator_cli

    simulator_cli.configure_parser(simulate)
    return parser


def _add_api_options(run: argparse.ArgumentParser) -> None:
    """Where the API is, and how hard it may be asked: every command that sends requests."""
    run.add_argument("--account-id", default=None, help="default: $BW_ACCOUNT_ID")
    run.add_argument("--base-url", default=DEFAULT_BASE_URL)
    run.add_argument("--token-url", default=DEFAULT_TOKEN_URL)
    run.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help=f"requests/second allowed for the account (default {DEFAULT_RATE:g}); "
        "never exceeded in any 1-second window, and lowered automatically on 429",
    )
    run.add_argument("--max-attempts", type=int, default=6)
    run.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    run.add_argument(
        "--http-client",
        choices=("lean", "aiohttp"),
        default="lean",
        help="how Get Call State is sent: lean (auditor.http1, default) or aiohttp",
    )


def _add_job_options(
    job: argparse.ArgumentParser, partition_default: str, fresh: bool = True
) -> None:
    """discover and nightly: dataset layout, clock, and (discover) the run options."""
    job.add_argument(
        "--partition-by", choices=("none", "date"), default=partition_default,
        help=f"'date': Hive folders call_date=YYYY-MM-DD (default {partition_default})",
    )
    job.add_argument(
        "--as-of", metavar="TS", default=None,
        help="take TS as the current time (default: the clock); for replays and simulators",
    )
    if fresh:
        job.add_argument("--fresh", action="store_true", help="delete earlier parts first")
        job.add_argument("--no-progress", action="store_true")
        job.add_argument("--log-interval", type=float, default=5.0, metavar="SECONDS")


def _add_run_options(run: argparse.ArgumentParser) -> None:
    _add_api_options(run)
    run.add_argument(
        "--concurrency",
        default="auto",
        help="max requests in flight, or 'auto' (Little's law from observed latency)",
    )
    run.add_argument("--id-column", default=None, help="default: callId, call_id or id")
    run.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    run.add_argument(
        "--row-group-rows",
        type=int,
        default=10_000,
        metavar="N",
        help="rows per part file (default 10000); a crash refetches at most about this many",
    )
    run.add_argument("--no-progress", action="store_true")
    run.add_argument(
        "--log-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (default 5)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "demo":
            from auditor.demo import run_demo

            return run_demo(Path(args.output), args.calls, args.rate, not args.no_progress)
        if args.command == "summary":
            return _summary(Path(args.directory))
        if args.command == "discover":
            return _discover(args)
        if args.command == "nightly":
            return _nightly(args)
        if args.command == "report":
            return _report(Path(args.directory), Path(args.html))
        from auditor.simulator import cli as simulator_cli

        return simulator_cli.run(args)
    except (ConfigError, InputError, OutputError) as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    summary = run_with_signals(_job_config(args, args.inputs), args.log_interval)
    print_summary(summary)
    return summary.exit_code


def run_with_signals(config: AuditConfig, log_interval: float = 5.0) -> RunSummary:
    """Run one audit; SIGINT and SIGTERM stop it gracefully (flush, summary, 130/143)."""
    return _run_job(Audit(config), config, log_interval)


class _Job(Protocol):
    progress: Progress

    def request_stop(self, reason: str) -> None: ...

    async def run(self) -> RunSummary: ...


def _job_config(args: argparse.Namespace, inputs: Sequence[str] = ()) -> AuditConfig:
    """The AuditConfig of run, discover and nightly from their flags and the environment."""
    concurrency: int | None = None
    if getattr(args, "concurrency", "auto") != "auto":
        try:
            concurrency = int(args.concurrency)
        except ValueError:
            raise ConfigError("--concurrency must be a positive integer or 'auto'") from None
    return AuditConfig(
        inputs=list(inputs),
        output=args.output,
        account_id=args.account_id or os.environ.get("BW_ACCOUNT_ID", ""),
        credentials=credentials_from_env(),
        base_url=args.base_url,
        token_url=args.token_url,
        rate=args.rate,
        concurrency=concurrency,
        id_column=getattr(args, "id_column", None),
        max_attempts=args.max_attempts,
        timeout=args.timeout,
        fresh=args.fresh,
        row_group_rows=getattr(args, "row_group_rows", 10_000),
        progress=not args.no_progress,
        partition_by=None if args.partition_by == "none" else args.partition_by,
        http_client=args.http_client,
    )


def _as_of(args: argparse.Namespace) -> float | None:
    from auditor.listing import parse_timestamp

    return None if args.as_of is None else parse_timestamp(args.as_of, "--as-of") / 1000


def _discover(args: argparse.Namespace) -> int:
    import time

    from auditor.discover import Discover
    from auditor.listing import ListFilters, Window, parse_duration, parse_timestamp

    as_of = _as_of(args)
    now_ms = int((as_of if as_of is not None else time.time()) * 1000)
    if args.since is not None:
        if args.end is not None:
            raise ConfigError("--end goes with --start, not with --since")
        start = now_ms - int(parse_duration(args.since, "--since") * 1000)
        end = now_ms
    else:
        start = parse_timestamp(args.start, "--start")
        end = now_ms if args.end is None else parse_timestamp(args.end, "--end")
    if end < start:
        raise ConfigError("the window ends before it starts: check --start and --end")
    filters = ListFilters(args.to, args.from_, args.disconnect_cause)
    config = _job_config(args)
    summary = _run_job(Discover(config, Window(start, end), filters), config, args.log_interval)
    print_summary(summary)
    _print_listing(summary)
    return summary.exit_code


def _nightly(args: argparse.Namespace) -> int:
    from auditor.listing import parse_duration
    from auditor.nightly import Nightly

    settle = parse_duration(args.settle, "--settle")
    config = _job_config(args)
    job = Nightly(config, args.ids, settle, _as_of(args))
    summary = _run_job(job, config, args.log_interval)
    print_summary(summary)
    _print_listing(summary)
    return summary.exit_code


def _run_job(job: _Job, config: AuditConfig, log_interval: float) -> RunSummary:
    """Run a job (audit, discover, nightly); SIGINT/SIGTERM stop it gracefully (130/143)."""

    async def go() -> RunSummary:
        loop = asyncio.get_running_loop()
        for signum, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
            loop.add_signal_handler(signum, job.request_stop, name)
        try:
            async with live_progress(job.progress, config.progress, interval=log_interval):
                return await job.run()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    # uvloop when installed, a quieter GC, no pandas: see auditor.runtime
    return runtime.run(go())


def _print_listing(summary: RunSummary) -> None:
    details = summary.details
    listing = details.get("listing")
    if listing:
        listed = listing["listed"]
        per_call = f"{listing['requests'] / listed:.6f}" if listed else "-"
        print(
            f"List Calls: {listed} calls in {listing['complete']} windows, "
            f"{listing['requests']} requests ({listing['capped']} capped at 10,000 and split; "
            f"{per_call} requests per listed call)",
            file=sys.stderr,
        )
        for failure in listing["failed"][:5]:
            print(f"  not listed: {failure}", file=sys.stderr)
    if "get_requests" in details:
        plan = ", ".join(f"{k}={v}" for k, v in sorted(details["get_plan"].items()))
        print(
            f"nightly: {details['get_requests']} Get Call State requests ({plan or 'none'}); "
            f"watermark {details['watermark_before']} -> {details['watermark_after']}",
            file=sys.stderr,
        )


def _report(directory: Path, target: Path) -> int:
    from auditor.html_report import write_report

    written = write_report(directory, target)
    print(f"report: {written}", file=sys.stderr)
    return 0


def _summary(directory: Path) -> int:
    from auditor.summary import describe_dataset

    print(describe_dataset(directory))
    return 0


def _error(message: str) -> None:
    print(f"auditor: error: {message}", file=sys.stderr)
