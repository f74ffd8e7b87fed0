"""``auditor simulate``: flags, and serving until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

from auditor.simulator.config import SimConfig
from auditor.simulator.population import Population
from auditor.simulator.server import Simulator, is_loopback


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to *parser*."""
    d = SimConfig()
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default %(default)s; loopback only unless "
                          "--allow-non-loopback)")
    net.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    net.add_argument("--allow-non-loopback", action="store_true",
                     help="allow binding to an address other than loopback")
    net.add_argument("--json", action="store_true",
                     help="print the URLs and credentials as one JSON line on stdout")

    pop = parser.add_argument_group("population")
    pop.add_argument("--calls", type=int, default=10_000,
                     help="number of simulated calls (default %(default)s)")
    pop.add_argument("--seed", type=int, default=d.seed, help="seed (default %(default)s)")
    pop.add_argument("--account-id", default=d.account_id, help="account id (default %(default)s)")
    pop.add_argument("--span-days", type=_positive, default=d.span_days,
                     help="calls spread over the last N days; past 7 days they have expired "
                          "(default %(default)s)")
    pop.add_argument("--young-fraction", type=_fraction, default=d.young_fraction,
                     help="share of calls too recent to be visible yet (default %(default)s)")
    pop.add_argument("--visibility-delay", type=_non_negative, default=d.visibility_delay,
                     help="seconds before a new call becomes visible (default %(default)s)")
    pop.add_argument("--frozen-clock", action="store_true",
                     help="keep the simulated clock still (default: it follows real time, so "
                          "calls progress and tokens expire)")
    pop.add_argument("--export-ids", metavar="FILE", type=Path,
                     help="write every call id to FILE (.csv or .parquet, column callId)")
    pop.add_argument("--export-only", action="store_true",
                     help="with --export-ids: write the file and exit without serving")

    auth = parser.add_argument_group("credentials")
    auth.add_argument("--client-id", default=d.client_id,
                      help="OAuth2 client id (default %(default)s)")
    auth.add_argument("--client-secret", default=d.client_secret, help="OAuth2 client secret")
    auth.add_argument("--username", default=d.username,
                      help="legacy Basic auth user (default %(default)s)")
    auth.add_argument("--password", default=d.password, help="legacy Basic auth password")
    auth.add_argument("--token-ttl", type=_positive, default=d.token_ttl,
                      help="bearer token lifetime in seconds (default %(default)s)")

    faults = parser.add_argument_group("behaviour")
    faults.add_argument("--rate", type=_positive, default=None,
                        help="requests admitted per sliding second; over it: 429 "
                             "(default: no limit)")
    faults.add_argument("--retry-after-date", action="store_true",
                        help="send Retry-After as an HTTP-date instead of seconds")
    faults.add_argument("--latency-ms", type=_non_negative, default=0.0,
                        help="mean response latency, lognormal spread (default 0)")
    faults.add_argument("--error-rate", type=_fraction, default=0.0,
                        help="share of 500/503 answers")
    faults.add_argument("--reset-rate", type=_fraction, default=0.0,
                        help="share of connections dropped mid-request")
    faults.add_argument("--truncate-rate", type=_fraction, default=0.0,
                        help="share of 200 answers with a cut-off JSON body")
    faults.add_argument("--slow-rate", type=_fraction, default=0.0,
                        help="share of answers stalled for --slow-seconds")
    faults.add_argument("--slow-seconds", type=_non_negative, default=d.slow_seconds,
                        help="how long a slow answer stalls (default %(default)s)")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The :class:`SimConfig` the flags describe (raises ValueError when inconsistent)."""
    return SimConfig(
        calls=args.calls, seed=args.seed, account_id=args.account_id,
        client_id=args.client_id, client_secret=args.client_secret,
        username=args.username, password=args.password, token_ttl=args.token_ttl,
        visibility_delay=args.visibility_delay, rate=args.rate,
        retry_after_http_date=args.retry_after_date, latency_ms=args.latency_ms,
        error_rate=args.error_rate, reset_rate=args.reset_rate,
        truncate_rate=args.truncate_rate, slow_rate=args.slow_rate,
        slow_seconds=args.slow_seconds, span_days=args.span_days,
        young_fraction=args.young_fraction, frozen_clock=args.frozen_clock,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (exit 0); 2 on bad flags or a non-loopback host."""
    if not args.allow_non_loopback and not is_loopback(args.host):
        print(f"auditor: error: refusing to bind to non-loopback host {args.host!r} "
              "(pass --allow-non-loopback to allow it)", file=sys.stderr)
        return 2
    if args.export_only and args.export_ids is None:
        print("auditor: error: --export-only needs --export-ids FILE", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"auditor: error: {exc}", file=sys.stderr)
        return 2
    if args.export_ids is not None:
        try:
            count = Population(cfg).export_ids(args.export_ids)
        except (OSError, ValueError) as exc:
            print(f"auditor: error: cannot export ids: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {count} call ids to {args.export_ids}", file=sys.stderr)
        if args.export_only:
            return 0
    try:
        return asyncio.run(_serve(cfg, args))
    except OSError as exc:  # the port is taken, the address is not ours...
        print(f"auditor: error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1


async def _serve(cfg: SimConfig, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator(cfg, args.host, args.port, allow_non_loopback=True) as sim:
        _announce(sim, args)
        await stop.wait()
    return 0


def _announce(sim: Simulator, args: argparse.Namespace) -> None:
    cfg = sim.config
    info: dict[str, Any] = {
        "url": sim.url, "base_url": sim.base_url, "token_url": sim.token_url,
        "account_id": cfg.account_id, "client_id": cfg.client_id,
        "client_secret": cfg.client_secret, "username": cfg.username, "password": cfg.password,
        "calls": cfg.calls, "seed": cfg.seed, "now": sim.clock.anchor, "pid": os.getpid(),
        "export_ids": str(args.export_ids) if args.export_ids is not None else None,
    }
    if args.json:
        sys.stdout.write(orjson.dumps(info).decode() + "\n")
    else:
        sys.stdout.write(
            f"Bandwidth Voice API simulator: {cfg.calls} calls, seed {cfg.seed}\n"
            f"  base URL     {sim.base_url}\n"
            f"  token URL    {sim.token_url}\n"
            f"  account id   {cfg.account_id}\n"
            f"  OAuth2       client id {cfg.client_id!r}, client secret {cfg.client_secret!r}\n"
            f"  legacy Basic username {cfg.username!r}, password {cfg.password!r}\n"
            f"  stats        {sim.url}/_sim/stats\n"
            "Ctrl-C stops it.\n"
        )
    sys.stdout.flush()
