"""The lean HTTP/1.1 client (auditor.http1) against real sockets on loopback.

A scripted server answers each request with the next scripted action, so every framing,
failure and connection-reuse case is exercised over TCP (and TLS) as it happens in the
wild; the parser is also fed every response split at every byte.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme

from auditor.http1 import Http1Pool, HttpError, _ResponseParser

Action = bytes | str | Callable[[asyncio.StreamWriter], Awaitable[None]]
BODY = b'{"callId":"c-1","state":"disconnected"}'


def ok(body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def chunked(body: bytes, size: int = 7) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + framed + b"0\r\nX-T: 1\r\n\r\n"


class Scripted:
    """Answers the n-th request (over any connection) with ``script[n]``.

    An action is raw response bytes, ``"close"`` (close before answering), ``"hang"``
    (never answer, until the client hangs up), or a coroutine function given the
    connection's writer.
    """

    def __init__(self, script: list[Action]) -> None:
        self.script = list(script)
        self.heads: list[bytes] = []
        self.connections = 0
        self.port = 0
        self.asked = asyncio.Event()  # set at the first request

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.heads.append(head)
                self.asked.set()
                action = self.script.pop(0) if self.script else ok()
                if action == "close":
                    return
                if action == "hang":
                    await reader.read()  # never answer; done once the client hangs up
                    return
                if isinstance(action, bytes):
                    writer.write(action)
                    await writer.drain()
                elif callable(action):
                    await action(writer)
                if writer.is_closing():
                    return
        finally:
            writer.close()


@asynccontextmanager
async def serve(
    script: list[Action], tls: ssl.SSLContext | None = None
) -> AsyncIterator[Scripted]:
    scripted = Scripted(script)
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0, ssl=tls)
    async with server:
        scripted.port = server.sockets[0].getsockname()[1]
        yield scripted
        server.close()


def pool_for(server: Scripted, scheme: str = "http", **kwargs: object) -> Http1Pool:
    return Http1Pool(
        f"{scheme}://127.0.0.1:{server.port}/api",
        connect_timeout=2.0,
        user_agent="auditor-test",
        **kwargs,  # type: ignore[arg-type]
    )


async def get(pool: Http1Pool, path: str = "/api/c-1", seconds: float = 2.0, cap: int = 1 << 20):
    return await pool.get(path, "Bearer tok", seconds, cap)


async def test_keep_alive_reuses_one_connection_and_sends_a_clean_head() -> None:
    async with serve([ok()] * 50) as server, pool_for(server) as pool:
        for i in range(50):
            reply = await get(pool, f"/api/c-{i}")
            assert (reply.status, reply.body) == (200, BODY)
            assert reply.headers["content-type"] == "application/json"
        assert server.connections == 1
        head = server.heads[7].decode()
        assert head.startswith("GET /api/c-7 HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{server.port}\r\n" in head
        assert "Authorization: Bearer tok\r\n" in head
        assert "Accept-Encoding: identity\r\n" in head


async def test_concurrent_requests_open_one_connection_each_then_share_them() -> None:
    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(ok())

    async with serve([slow] * 8 + [ok()] * 8) as server, pool_for(server) as pool:
        first = await asyncio.gather(*(get(pool) for _ in range(8)))
        second = await asyncio.gather(*(get(pool) for _ in range(8)))
        assert all(r.body == BODY for r in first + second)
        assert server.connections == 8


GZIPPED = gzip.compress(BODY)
DEFLATED = zlib.compress(BODY)

FRAMINGS = {
    "content-length": (ok(), 200, BODY),
    "chunked with extensions and trailers": (chunked(BODY), 200, BODY),
    "one big chunk": (chunked(BODY, 1000), 200, BODY),
    "gzip despite identity": (ok(GZIPPED, b"Content-Encoding: gzip\r\n"), 200, BODY),
    "deflate": (ok(DEFLATED, b"Content-Encoding: deflate\r\n"), 200, BODY),
    "no content": (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
    "interim 100 first": (b"HTTP/1.1 100 Continue\r\n\r\n" + ok(), 200, BODY),
    "404 with an error body": (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}", 404, b"{}"
    ),
    "repeated header": (ok(extra=b"Via: a\r\nVIA: b\r\n"), 200, BODY),
}


@pytest.mark.parametrize("name", FRAMINGS)
async def test_body_framings_over_a_socket(name: str) -> None:
    raw, status, body = FRAMINGS[name]
    async with serve([raw, ok()]) as server, pool_for(server) as pool:
        reply = await get(pool)
        assert (reply.status, reply.body) == (status, body)
        assert (await get(pool)).body == BODY  # and the connection is still good
        assert server.connections == 1
        if name == "repeated header":
            assert reply.headers["via"] == "a, b"


@pytest.mark.parametrize("name", FRAMINGS)
def test_parser_takes_a_response_split_at_any_byte(name: str) -> None:
    raw, status, body = FRAMINGS[name]
    for cut in range(1, len(raw)):
        parser = _ResponseParser(1 << 20)
        assert not parser.feed(raw[:cut]) or cut == len(raw)
        assert parser.feed(raw[cut:])
        reply = parser.reply()
        assert (reply.status, reply.body) == (status, body), cut
    parser = _ResponseParser(1 << 20)
    done = [parser.feed(raw[i : i + 1]) for i in range(len(raw))]
    assert done[-1] and not any(done[:-1])
    assert parser.reply().body == body


async def test_close_delimited_body_and_connection_close_are_not_reused() -> None:
    async def until_close(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + BODY)
        writer.close()

    script: list[Action] = [until_close, ok(extra=b"Connection: close\r\n"), ok()]
    async with serve(script) as server, pool_for(server) as pool:
        assert (await get(pool)).body == BODY
        assert (await get(pool)).body == BODY  # on a new connection
        # the server keeps the socket open after its Connection: close; it is not reused
        assert (await get(pool)).body == BODY
        assert server.connections == 3


async def test_bodies_over_the_cap_are_not_kept_and_the_connection_is_dropped() -> None:
    big = b"x" * 5000
    gzip_bomb = gzip.compress(b"{" + b" " * 200_000 + b"}")

    async def until_close(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + big)
        writer.close()

    script: list[Action] = [
        ok(big),
        chunked(big, 512),
        until_close,
        ok(gzip_bomb, b"Content-Encoding: gzip\r\n"),
    ]
    async with serve([*script, ok()]) as server, pool_for(server) as pool:
        for _ in script:
            reply = await get(pool, cap=4096)
            assert reply.status == 200 and reply.body is None
        assert (await get(pool, cap=4096)).body == BODY
        assert server.connections == 4  # each over-cap response closed its connection


async def cut_mid_body(writer: asyncio.StreamWriter) -> None:
    writer.write(ok()[:-5])
    await writer.drain()
    writer.transport.abort()


async def reset(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


FAILURES: dict[str, tuple[Action, str]] = {
    "closed before answering": ("close", "server disconnected"),
    "reset before answering": (reset, "server disconnected"),
    "cut off mid-body": (cut_mid_body, "response body cut off"),
    "not HTTP": (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed response (status line)"),
    "bad header line": (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed response"),
    "bad chunk size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed response"
    ),
    "bad chunk framing": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n",
        "malformed response",
    ),
    "bad content-length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed response"
    ),
    "unknown transfer coding": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "malformed response"
    ),
    "unknown content coding": (
        ok(BODY, b"Content-Encoding: br\r\n"), "unsupported content-encoding"
    ),
    "stalled": ("hang", "timed out"),
}


@pytest.mark.parametrize("name", FAILURES)
async def test_failures_are_short_errors_and_the_next_request_works(name: str) -> None:
    action, message = FAILURES[name]
    async with serve([action, ok()]) as server, pool_for(server) as pool:
        with pytest.raises(HttpError) as raised:
            await get(pool, seconds=0.3)
        assert message in str(raised.value)
        assert "tok" not in str(raised.value)
        assert (await get(pool)).body == BODY
        assert server.connections == 2  # the troubled connection was never reused


async def test_a_server_that_accepts_and_hangs_up_is_disconnected_not_a_timeout() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        async with Http1Pool(f"http://127.0.0.1:{port}", connect_timeout=5, user_agent="t") as pool:
            for _ in range(3):
                with pytest.raises(HttpError, match="server disconnected"):
                    await get(pool, "/c-1", seconds=30)


def test_parser_takes_big_chunks_in_small_pieces() -> None:
    body = bytes(range(256)) * 600
    raw = chunked(body, 65536)
    parser = _ResponseParser(1 << 20)
    pieces = [raw[i : i + 1000] for i in range(0, len(raw), 1000)]
    assert [parser.feed(p) for p in pieces][-1]
    assert parser.reply().body == body


async def test_a_closed_port_cannot_connect() -> None:
    async with serve([]) as server:
        port = server.port
    async with Http1Pool(
        f"http://127.0.0.1:{port}", connect_timeout=1.0, user_agent="t"
    ) as pool:
        with pytest.raises(HttpError, match="cannot connect"):
            await get(pool, "/c-1")


async def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    async def answer_then_close(writer: asyncio.StreamWriter) -> None:
        writer.write(ok())  # keep-alive promised, then the server drops it while idle
        await writer.drain()
        writer.close()

    async with serve([answer_then_close, ok()]) as server, pool_for(server) as pool:
        assert (await get(pool)).body == BODY
        await pool._idle[0].lost  # the client has seen the server's FIN
        assert (await get(pool)).body == BODY
        assert server.connections == 2


async def test_header_injection_and_unencoded_targets_are_refused() -> None:
    async with serve([]) as server, pool_for(server) as pool:
        with pytest.raises(HttpError, match="line break"):
            await pool.get("/c-1", "Bearer x\r\nX-Evil: 1", 1.0, 1000)
        with pytest.raises(HttpError, match="percent-encoded"):
            await pool.get("/c 1", "Bearer x", 1.0, 1000)
        assert not server.heads


async def test_a_cancelled_request_aborts_its_connection_and_close_waits_for_all() -> None:
    async with serve(["hang", ok()]) as server:
        pool = pool_for(server)
        async with pool:
            task = asyncio.create_task(get(pool, seconds=30))
            await server.asked.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await get(pool)).body == BODY
            assert server.connections == 2
        assert not pool._open  # every transport reported closed before close() returned
        with pytest.raises(HttpError, match="closed"):
            await get(pool)


async def test_tls_is_verified() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with serve([ok(), ok()], tls=server_context) as server:
        async with pool_for(server, "https", ssl_context=trusting) as pool:
            assert (await get(pool)).body == BODY
            assert (await get(pool)).body == BODY
            assert server.connections == 1
        async with pool_for(server, "https") as pool:  # the system CAs do not know this one
            with pytest.raises(HttpError, match="TLS failed"):
                await get(pool)
