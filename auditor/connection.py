"""One connection to the Voice API, shared by every request of a job.

A job may make two kinds of requests: List Calls pages (:mod:`auditor.listing`) and Get
Call State (:mod:`auditor.pipeline`).  Both must count against the same account-wide rate,
reuse the same OAuth2 token and follow the same retry policy, so they share one
:class:`Connection`: one aiohttp session, one :class:`~auditor.client.VoiceClient` (and its
:class:`~auditor.client.TokenSource`), one :class:`~auditor.limits.RateGate`, one
:class:`~auditor.retry.RetryPolicy` and one set of :class:`~auditor.fetch.FetchStats`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from auditor import __version__
from auditor.client import VoiceClient
from auditor.config import AuditConfig
from auditor.fetch import FetchStats
from auditor.http1 import Http1Pool
from auditor.limits import RateGate
from auditor.retry import RetryPolicy


@dataclass
class Connection:
    client: VoiceClient
    gate: RateGate
    stats: FetchStats
    policy: RetryPolicy


@contextlib.asynccontextmanager
async def connect(config: AuditConfig) -> AsyncIterator[Connection]:
    """Open the session for *config*; closed when the block exits."""
    connector = aiohttp.TCPConnector(limit=config.max_concurrency + 8)
    timeout = aiohttp.ClientTimeout(total=config.timeout, sock_connect=config.connect_timeout)
    async with contextlib.AsyncExitStack() as scope:
        session = await scope.enter_async_context(
            aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)
        )
        pool = None
        if config.http_client == "lean":
            pool = await scope.enter_async_context(
                Http1Pool(
                    config.base_url,
                    connect_timeout=config.connect_timeout,
                    user_agent=f"auditor/{__version__}",
                )
            )
        client = VoiceClient(
            session,
            config.base_url,
            config.account_id,
            config.credentials,
            config.token_url,
            config.max_body_bytes,
            pool=pool,
            timeout=config.timeout,
        )
        yield Connection(
            client,
            RateGate(config.rate),
            FetchStats(),
            RetryPolicy(max_attempts=config.max_attempts),
        )
