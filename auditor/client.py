"""HTTP transport for the Voice API: one request in, one :class:`Response` out.

This module knows URLs, headers, credentials and byte limits, and nothing about retrying:
:mod:`auditor.fetch` puts the policy on top.  Transport failures (timeouts, refused or
dropped connections, broken or oversized bodies) come back as a :class:`Response` with
``status=None`` and an ``error`` text, never as exceptions, so the policy sees one shape.
The single exception is :class:`AuthError`: credentials that cannot work end the run.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
import yarl

from auditor.config import BasicCredentials, Credentials, OAuth2Credentials
from auditor.http1 import Http1Pool, HttpError

#: Refresh a token this long before it expires, so no request carries one that just died.
TOKEN_REFRESH_MARGIN: Final = 30.0
_TOKEN_ATTEMPTS: Final = 4


class AuthError(Exception):
    """Credentials were refused or cannot be obtained; the message says what to check."""


@dataclass(slots=True)
class Response:
    status: int | None  # None: no HTTP response arrived
    body: bytes | None = None
    retry_after: str | None = None
    error: str | None = None
    link: str | None = None  # List Calls: the raw Link header(s), comma-joined


def basic_header(user: str, password: str) -> str:
    raw = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class TokenSource:
    """One OAuth2 client-credentials token shared by every worker.

    ``header()`` is cheap while the token is fresh.  When it is about to expire, the first
    caller refreshes it under a lock and the others wait for that one refresh.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        token_url: str,
        credentials: OAuth2Credentials,
    ) -> None:
        self._session = session
        self._url = token_url
        self._basic = basic_header(credentials.client_id, credentials.client_secret.reveal())
        self._lock = asyncio.Lock()
        self._header: str | None = None
        self._expires_at = 0.0
        self.tokens_fetched = 0

    async def header(self) -> str:
        if self._header is not None and time.monotonic() < self._expires_at:
            return self._header
        async with self._lock:
            if self._header is None or time.monotonic() >= self._expires_at:
                await self._refresh()
            assert self._header is not None
            return self._header

    def fresh_header(self) -> str | None:
        """The current header if it is still fresh, else None (then ``await header()``)."""
        if self._header is not None and time.monotonic() < self._expires_at:
            return self._header
        return None

    def invalidate(self, header: str) -> None:
        """Drop *header* after a 401, unless another worker already replaced it."""
        if self._header == header:
            self._header = None

    async def _refresh(self) -> None:
        last_problem = ""
        for attempt in range(_TOKEN_ATTEMPTS):
            if attempt:
                await asyncio.sleep(0.25 * 2**attempt)
            try:
                async with self._session.post(
                    self._url,
                    data={"grant_type": "client_credentials"},
                    headers={"Authorization": self._basic, "Accept": "application/json"},
                    allow_redirects=False,
                ) as resp:
                    body = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                last_problem = _describe(exc)
                continue
            if status in (400, 401, 403):
                raise AuthError(
                    f"the token endpoint refused the client credentials (HTTP {status}): "
                    "check BW_CLIENT_ID and BW_CLIENT_SECRET, and --token-url"
                )
            if status != 200:
                last_problem = f"HTTP {status}"
                continue
            try:
                payload = orjson.loads(body)
                token = payload["access_token"]
                lifetime = float(payload.get("expires_in", 3600))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                last_problem = "a token response without access_token"
                continue
            if not isinstance(token, str) or not token:
                last_problem = "a token response without access_token"
                continue
            self._header = "Bearer " + token
            margin = min(TOKEN_REFRESH_MARGIN, lifetime / 10)
            self._expires_at = time.monotonic() + lifetime - margin
            self.tokens_fetched += 1
            return
        raise AuthError(
            f"could not get an OAuth2 token from --token-url ({last_problem}); "
            "check that the token endpoint is reachable"
        )


class VoiceClient:
    """The Voice API's two reads: Get Call State, and List Calls pages.

    Get Call State goes through *pool* (:mod:`auditor.http1`) when one is given, else
    through the aiohttp *session*, which also carries List Calls and token requests.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        account_id: str,
        credentials: Credentials,
        token_url: str,
        max_body_bytes: int = 1 << 20,
        *,
        pool: Http1Pool | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._session = session
        self._prefix = f"{base_url.rstrip('/')}/accounts/{quote(account_id, safe='')}/calls/"
        self._path = urlsplit(self._prefix).path
        self._max_body = max_body_bytes
        self._pool = pool
        self._timeout = timeout
        self.tokens: TokenSource | None = None
        self._basic: str | None = None
        if isinstance(credentials, OAuth2Credentials):
            self.tokens = TokenSource(session, token_url, credentials)
        else:
            assert isinstance(credentials, BasicCredentials)
            self._basic = basic_header(credentials.username, credentials.password.reveal())

    async def auth_header(self) -> str:
        if self.tokens is not None:
            return await self.tokens.header()
        assert self._basic is not None
        return self._basic

    def auth_header_now(self) -> str | None:
        """The header, when it is at hand without a token request (the usual case).

        Saves each request two coroutine frames; None means ``await auth_header()``.
        """
        if self.tokens is not None:
            return self.tokens.fresh_header()
        return self._basic

    async def get_call_state(self, call_id: str, auth: str) -> Response:
        """GET one call's state.  *call_id* must already have passed ``is_valid_call_id``."""
        pool = self._pool
        if pool is None:
            return await self._get_call_state_aiohttp(call_id, auth)
        try:
            reply = await pool.get(self._path + call_id, auth, self._timeout, self._max_body)
        except HttpError as exc:
            return Response(None, error=str(exc))
        retry_after = reply.headers.get("retry-after")
        if reply.body is None:
            return Response(reply.status, None, retry_after, _too_big(self._max_body))
        return Response(reply.status, reply.body, retry_after)

    async def _get_call_state_aiohttp(self, call_id: str, auth: str) -> Response:
        url = self._prefix + call_id
        headers = {"Authorization": auth, "Accept": "application/json"}
        try:
            async with self._session.get(url, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                declared = resp.content_length  # parsed from the header on each access
                if declared is not None:
                    if declared > self._max_body:
                        return Response(status, None, retry_after, _too_big(self._max_body))
                    return Response(status, await resp.read(), retry_after)
                body = await _read_capped(resp, self._max_body)
                if body is None:
                    return Response(status, None, retry_after, _too_big(self._max_body))
                return Response(status, body, retry_after)
        except TimeoutError:
            return Response(None, error="timed out")
        except aiohttp.ClientError as exc:
            return Response(None, error=_describe(exc))

    @property
    def list_url(self) -> str:
        """List Calls for the account: ``.../accounts/{accountId}/calls`` (no query)."""
        return self._prefix.rstrip("/")

    async def get_list_page(
        self, url: yarl.URL, auth: str, max_body: int, seconds: float
    ) -> Response:
        """GET one List Calls page at *url*, sent exactly as given (already encoded).

        The caller builds *url* (filters) or takes it from a ``Link: rel="next"`` header; it
        must already be checked to point at the API's origin.  Bodies are capped at
        *max_body* bytes; a page of 10,000 calls is many megabytes, so its time limit,
        *seconds*, is separate from the per-call one.
        """
        headers = {"Authorization": auth, "Accept": "application/json"}
        try:
            async with self._session.get(
                url,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                links = resp.headers.getall("Link", [])
                link = ", ".join(links) if links else None
                declared = resp.content_length
                if declared is not None and declared > max_body:
                    return Response(status, None, retry_after, _too_big(max_body))
                body = await _read_capped(resp, max_body)
                if body is None:
                    return Response(status, None, retry_after, _too_big(max_body))
                return Response(status, body, retry_after, link=link)
        except TimeoutError:
            return Response(None, error="timed out")
        except aiohttp.ClientError as exc:
            return Response(None, error=_describe(exc))



async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None once it passes *limit* bytes (a lying or absent Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_big(limit: int) -> str:
    return f"response body larger than {limit} bytes"


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a transport error."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response body cut off"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
