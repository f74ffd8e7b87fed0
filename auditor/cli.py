"""Command line: ``auditor run | demo | summary | simulate``.

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

from auditor import __version__
from auditor.config import (
    DEFAULT_BASE_URL,
    DEFAULT_RATE,
    DEFAULT_TOKEN_URL,
    AuditConfig,
    ConfigError,
    credentials_from_env,
)
from auditor.console import live_progress, print_summary
from auditor.pipeline import EXIT_BAD_INPUT, Audit, RunSummary
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
    _add_run_options(run)

    demo = commands.add_parser("demo", help="the whole job against the built-in simulator")
    demo.add_argument("--output", "-o", default="auditor-demo-output", metavar="DIR")
    demo.add_argument("--calls", type=int, default=3000, help="simulated calls (default 3000)")
    demo.add_argument("--rate", type=float, default=400.0, help="req/s (default 400)")
    demo.add_argument("--no-progress", action="store_true")

    summary = commands.add_parser("summary", help="the run summary of an output dataset")
    summary.add_argument("directory", metavar="DIR")

    simulate = commands.add_parser("simulate", help="serve the Bandwidth Voice API simulator")
    from auditor.simulator import cli as simulator_cli

    simulator_cli.configure_parser(simulate)
    return parser


def _add_run_options(run: argparse.ArgumentParser) -> None:
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
    run.add_argument(
        "--concurrency",
        default="auto",
        help="max requests in flight, or 'auto' (Little's law from observed latency)",
    )
    run.add_argument("--id-column", default=None, help="default: callId, call_id or id")
    run.add_argument("--max-attempts", type=int, default=6)
    run.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
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
        from auditor.simulator import cli as simulator_cli

        return simulator_cli.run(args)
    except (ConfigError, InputError, OutputError) as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    concurrency: int | None = None
    if args.concurrency != "auto":
        try:
            concurrency = int(args.concurrency)
        except ValueError:
            raise ConfigError("--concurrency must be a positive integer or 'auto'") from None
    config = AuditConfig(
        inputs=args.inputs,
        output=args.output,
        account_id=args.account_id or os.environ.get("BW_ACCOUNT_ID", ""),
        credentials=credentials_from_env(),
        base_url=args.base_url,
        token_url=args.token_url,
        rate=args.rate,
        concurrency=concurrency,
        id_column=args.id_column,
        max_attempts=args.max_attempts,
        timeout=args.timeout,
        fresh=args.fresh,
        row_group_rows=args.row_group_rows,
        progress=not args.no_progress,
    )
    summary = run_with_signals(config, args.log_interval)
    print_summary(summary)
    return summary.exit_code


def run_with_signals(config: AuditConfig, log_interval: float = 5.0) -> RunSummary:
    """Run one audit; SIGINT and SIGTERM stop it gracefully (flush, summary, 130/143)."""

    async def go() -> RunSummary:
        audit = Audit(config)
        loop = asyncio.get_running_loop()
        for signum, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
            loop.add_signal_handler(signum, audit.request_stop, name)
        try:
            async with live_progress(audit.progress, config.progress, interval=log_interval):
                return await audit.run()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    return asyncio.run(go())


def _summary(directory: Path) -> int:
    from auditor.summary import describe_dataset

    print(describe_dataset(directory))
    return 0


def _error(message: str) -> None:
    print(f"auditor: error: {message}", file=sys.stderr)
