"""A lean HTTP/1.1 client for the one request an audit makes millions of times.

Get Call State is a small GET, repeated for every id.  Sent through ``aiohttp``'s
``ClientSession``, each one costs about 60 µs of this process's CPU on loopback, measured
with a bare ``session.get`` loop: more than reading, deduplicating, decoding, normalising
and writing the row together.  Most of it is generality the audit never uses (URL parsing
and quoting, header merging, cookie jars, tracing, redirects, proxies, streaming readers).
:class:`Http1Pool` sends the same request over the same kind of keep-alive connections
with the request head rendered once per token, and parses the response in one pass
(about 20 µs).  ``auditor`` still uses ``aiohttp`` for everything else: OAuth2 tokens,
List Calls pages, and the simulator.

What it does: ``GET`` over HTTP/1.1 keep-alive connections, plain or TLS (the default
``ssl`` context: certificates and host names verified); bodies framed by
``Content-Length``, ``chunked`` or the connection's end; ``gzip``/``deflate`` bodies
decoded, though it asks for ``identity``; a cap on body size that stops reading as soon
as it is passed; a deadline per request (connect, send and the whole response) and a
separate connect timeout; idle connections closed after :data:`KEEPALIVE_SECONDS`.

What it does not do: redirects (a 3xx is returned as it is: credentials never follow a
``Location`` elsewhere), proxies, cookies, pipelining, HTTP/2.  Every failure is an
:class:`HttpError` whose text is short and free of secrets; a connection that saw any
problem is closed, never reused.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

#: Close a pooled connection idle this long rather than race the server's own idle close.
KEEPALIVE_SECONDS: Final = 15.0
#: A response head longer than this is not an API response.
MAX_HEAD_BYTES: Final = 64 * 1024


class HttpError(Exception):
    """No usable response: the text says why (``timed out``, ``server disconnected``...)."""


@dataclass(slots=True)
class Reply:
    """One HTTP response.  ``body`` is None when it was larger than the cap (not read)."""

    status: int
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes | None


class Http1Pool:
    """Keep-alive HTTP/1.1 connections to one origin, for concurrent ``GET`` requests.

    Each request takes an idle connection (the most recently used first) or opens one;
    there are never more connections than requests in flight, so the caller's concurrency
    is the only limit.  Use ``async with``: leaving closes every connection.

    *ssl_context* is for https origins; the default verifies against the system's CAs.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        user_agent: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL")
        self._tls = None
        if parts.scheme == "https":
            self._tls = ssl_context or ssl.create_default_context()
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        default_port = parts.port is None or parts.port == (443 if self._tls else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._authority = host if default_port else f"{host}:{self._port}"
        self._connect_timeout = connect_timeout
        self._fixed_headers = (
            f"Host: {self._authority}\r\nUser-Agent: {user_agent}\r\n"
            "Accept: application/json\r\nAccept-Encoding: identity\r\n"
        )
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._head_for: tuple[str, bytes] | None = None
        self._closed = False

    async def __aenter__(self) -> Http1Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection and wait until the transports are gone."""
        self._closed = True
        self._idle.clear()
        connections = list(self._open)
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.gather(*(c.lost for c in connections))

    async def get(self, path: str, authorization: str, seconds: float, max_body: int) -> Reply:
        """``GET path`` (already percent-encoded) with *authorization*, within *seconds*.

        The deadline is kept with one timer, not ``asyncio.timeout()``, which costs a
        context manager and a task reschedule per request.

        Raises :class:`HttpError` when no complete response arrives in time.
        """
        if self._closed:
            raise HttpError("client closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        connection = self._take_idle(loop.time())
        if connection is None:
            connection = await self._connect(loop, deadline)
        waiter: asyncio.Future[Reply] = loop.create_future()
        timer = loop.call_at(deadline, _expire, waiter)
        connection.send(self._request_head(path, authorization), waiter, max_body)
        try:
            reply = await waiter
        except BaseException:
            connection.abort()  # mid-response: the connection can never be reused
            raise
        finally:
            timer.cancel()
        if connection.reusable:
            connection.idle_since = loop.time()
            self._idle.append(connection)
        else:
            connection.close()
        return reply

    def _request_head(self, path: str, authorization: str) -> bytes:
        cached = self._head_for
        if cached is None or cached[0] is not authorization:
            if "\r" in authorization or "\n" in authorization:
                raise HttpError("refusing a header value with a line break in it")
            block = f"{self._fixed_headers}Authorization: {authorization}\r\n\r\n"
            cached = self._head_for = (authorization, block.encode("latin-1"))
        if not path.isascii() or " " in path or "\r" in path or "\n" in path:
            raise HttpError("refusing a request target that is not percent-encoded")
        return b"GET " + path.encode("ascii") + b" HTTP/1.1\r\n" + cached[1]

    def _take_idle(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.usable and now - connection.idle_since < KEEPALIVE_SECONDS:
                return connection
            connection.close()
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        seconds = min(self._connect_timeout, deadline - loop.time())
        connection = _Connection(loop)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: connection,
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls else None,
                ),
                max(seconds, 0.0),
            )
        except TimeoutError:
            raise HttpError("timed out") from None
        except ssl.SSLError as exc:
            raise HttpError(f"TLS failed ({exc.reason or type(exc).__name__})") from None
        except OSError as exc:
            raise HttpError(f"cannot connect ({exc.strerror or type(exc).__name__})") from None
        self._open.add(connection)
        connection.lost.add_done_callback(lambda _: self._open.discard(connection))
        return connection


def _expire(waiter: asyncio.Future[Reply]) -> None:
    if not waiter.done():
        waiter.set_exception(HttpError("timed out"))


class _Connection(asyncio.Protocol):
    """One connection; at most one request on it at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = loop.create_future()
        self.usable = False  # connected, and nothing has gone wrong on it
        self.reusable = False  # the last response left it clean for another request
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Reply] | None = None
        self._parser: _ResponseParser | None = None

    # -- used by the pool -------------------------------------------------------------------

    def send(self, head: bytes, waiter: asyncio.Future[Reply], max_body: int) -> None:
        if not self.usable or self.transport is None or self.transport.is_closing():
            # closed by the server between connecting and now: no callback would come
            waiter.set_exception(HttpError("server disconnected"))
            return
        self._waiter = waiter
        self._parser = _ResponseParser(max_body)
        self.reusable = False
        self.transport.write(head)

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.usable = False
        self._waiter = self._parser = None
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.usable = True

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self.abort()  # bytes nobody asked for: this connection cannot be trusted
            return
        try:
            reply = parser.reply() if parser.feed(data) else None
        except HttpError as exc:
            self._finish(exc)
            self.abort()
            return
        if reply is not None:
            self.reusable = parser.keep_alive and self.usable
            self._finish(reply)

    def eof_received(self) -> bool:
        self.usable = False
        self._settle_at_end()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self._settle_at_end()
        if not self.lost.done():
            self.lost.set_result(None)

    def _settle_at_end(self) -> None:
        parser = self._parser
        if parser is None:
            return
        try:
            self._finish(parser.at_end())
        except HttpError as exc:
            self._finish(exc)

    def _finish(self, result: Reply | HttpError) -> None:
        waiter = self._waiter
        self._waiter = self._parser = None
        if waiter is None or waiter.done():
            return
        if isinstance(result, HttpError):
            waiter.set_exception(result)
        else:
            waiter.set_result(result)


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE, _COMPLETE = range(7)


class _ResponseParser:
    """Parses one HTTP/1.1 response fed in pieces (RFC 9112).

    The usual case, a whole small response in one piece with a ``Content-Length``, takes
    one ``find``, one split of the head and one slice.
    """

    __slots__ = (
        "_chunks", "_max_body", "_pending", "_received", "_remaining", "_scanned", "_state",
        "headers", "keep_alive", "status", "too_big",
    )

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._pending = bytearray()  # an unfinished line waiting for its end
        self._scanned = 0  # where in _pending the search for a line end resumes
        self._state = _HEAD
        self._chunks: list[bytes] = []
        self._received = 0  # body bytes so far
        self._remaining = 0  # of the body (Content-Length) or of the current chunk
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.too_big = False

    def feed(self, data: bytes) -> bool:
        """Take the next bytes; True once the response is complete.

        Bytes of an unfinished line (the head, a chunk-size line, trailers) wait in a
        ``bytearray`` and are scanned only where new bytes could complete the line, so a
        response trickling in a byte at a time costs linear, not quadratic, time.
        """
        pending = self._pending
        if pending:
            pending += data
            line_end = b"\r\n\r\n" if self._state == _HEAD else b"\r\n"
            if self._state != _CHUNK_DATA and pending.find(line_end, self._scanned) < 0:
                self._wait_for_line(pending)
                return False
            buffer = bytes(pending)
            pending.clear()
            self._scanned = 0
        else:
            buffer = data
        while True:
            state = self._state
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return self._stash(buffer)
                self._parse_head(buffer[:end])
                buffer = buffer[end + 4 :]
                if self._state == _COMPLETE:
                    return self._done(buffer)
                # else the body follows (or, after an interim 1xx, the real head)
            elif state == _LENGTH:
                if len(buffer) < self._remaining:
                    if buffer:
                        self._chunks.append(buffer)
                        self._remaining -= len(buffer)
                    return False
                self._chunks.append(buffer[: self._remaining])
                return self._done(buffer[self._remaining :])
            elif state == _CHUNK_SIZE:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return self._stash(buffer)
                size = _chunk_size(buffer[:end])
                buffer = buffer[end + 2 :]
                if size == 0:
                    self._state = _TRAILERS
                    continue
                self._count(size)
                if self.too_big:
                    return True
                self._remaining = size + 2  # the data, then its CRLF
                self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                data_left = self._remaining - 2
                if data_left > 0:
                    piece = buffer[:data_left]
                    if piece:
                        self._chunks.append(piece)
                        self._remaining -= len(piece)
                        buffer = buffer[len(piece) :]
                    if self._remaining > 2:
                        return False
                if len(buffer) < 2:
                    return self._stash(buffer)
                if buffer[:2] != b"\r\n":
                    raise HttpError("malformed response (chunk framing)")
                buffer = buffer[2:]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if buffer.startswith(b"\r\n"):
                    return self._done(buffer[2:])
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return self._stash(buffer)
                return self._done(buffer[end + 4 :])
            else:  # _UNTIL_CLOSE
                if buffer:
                    self._count(len(buffer))
                    if self.too_big:
                        return True
                    self._chunks.append(buffer)
                return False

    def _stash(self, buffer: bytes) -> bool:
        """Keep the start of an unfinished line until more bytes come; always False."""
        self._pending += buffer
        if self._state != _CHUNK_DATA:
            self._wait_for_line(self._pending)
        return False

    def _wait_for_line(self, pending: bytearray) -> None:
        # the next scan starts where a CRLF (or the end of a CRLFCRLF) could still begin
        self._scanned = max(0, len(pending) - 3)
        if len(pending) > (MAX_HEAD_BYTES if self._state != _CHUNK_SIZE else 1024):
            raise HttpError("malformed response (line or head too long)")

    def at_end(self) -> Reply:
        """The connection ended: the response if it was complete (close-delimited)."""
        if self._state == _UNTIL_CLOSE:
            return self.reply()
        if self._state == _HEAD:
            raise HttpError("server disconnected")
        raise HttpError("response body cut off")

    def reply(self) -> Reply:
        if self.too_big:
            return Reply(self.status, self.headers, None)
        body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        encoding = self.headers.get("content-encoding")
        if encoding and encoding != "identity":
            return Reply(self.status, self.headers, _decode(body, encoding, self._max_body))
        return Reply(self.status, self.headers, body)

    # -- pieces -----------------------------------------------------------------------------

    def _done(self, rest: bytes) -> bool:
        if rest:
            self.keep_alive = False  # bytes past the response: never reuse the connection
        self._state = _COMPLETE
        return True

    def _count(self, size: int) -> None:
        self._received += size
        if self._received > self._max_body:
            self.too_big = True
            self.keep_alive = False  # the rest of the body is still coming: close instead

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit() or rest[3:4] not in ("", " "):
            raise HttpError("malformed response (status line)")
        status = int(code)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise HttpError("malformed response (header line)")
            name = name.lower()
            value = value.strip()
            previous = headers.get(name)
            headers[name] = value if previous is None else f"{previous}, {value}"
        if 100 <= status < 200:
            return  # 100 Continue and friends: wait for the final response
        self.status = status
        self.headers = headers
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            self.keep_alive = "close" not in connection
        else:
            self.keep_alive = "keep-alive" in connection
        if status in (204, 304):
            self._state = _COMPLETE
            return
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if coding.lower().rsplit(",", 1)[-1].strip() != "chunked":
                raise HttpError(f"malformed response (transfer-encoding {coding[:40]!r})")
            self._state = _CHUNK_SIZE
            return
        length = headers.get("content-length")
        if length is None:
            self._state = _UNTIL_CLOSE
            self.keep_alive = False
            return
        if not length.isdigit():
            raise HttpError("malformed response (content-length)")
        size = int(length)
        if size > self._max_body:
            self.too_big = True
            self.keep_alive = False
            self._state = _COMPLETE
            return
        self._remaining = size
        self._state = _LENGTH if size else _COMPLETE


def _chunk_size(line: bytes) -> int:
    text = line.split(b";", 1)[0].strip()
    try:
        if not text or len(text) > 16:
            raise ValueError
        return int(text, 16)
    except ValueError:
        raise HttpError("malformed response (chunk size)") from None


def _decode(body: bytes, encoding: str, limit: int) -> bytes | None:
    """Undo gzip or deflate; None once the decoded body passes *limit*."""
    name = encoding.lower().strip()
    if name in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif name == "deflate":
        decoder = zlib.decompressobj()
    else:
        raise HttpError(f"unsupported content-encoding {encoding[:40]!r}")
    try:
        decoded = decoder.decompress(body, limit + 1)
    except zlib.error:
        raise HttpError("response body cut off or corrupt (bad compressed data)") from None
    if len(decoded) > limit or decoder.unconsumed_tail:
        return None
    return decoded
