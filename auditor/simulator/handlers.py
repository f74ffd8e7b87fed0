"""The HTTP handlers: Bandwidth's Voice API paths, the token endpoint, and /_sim/*.

Every API request goes through the same gate, in the order a real gateway applies it:
credentials (401), account (403), rate limit (429). Only then may the request meet its
planned latency and fault, and finally the population answers (200 or 404). The hot path
(a GET for a cached body with no faults) is a handful of dict lookups and one response;
no middleware, no access log.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time

import orjson
from aiohttp import web

from auditor.simulator import errors
from auditor.simulator.auth import Authenticator
from auditor.simulator.faults import Fault, FaultPlanner, Plan
from auditor.simulator.listing import ListError, list_page, parse_query
from auditor.simulator.population import Population
from auditor.simulator.rand import derive_key
from auditor.simulator.ratelimit import SlidingWindowLimiter, WindowPeak, retry_after_seconds
from auditor.simulator.stats import SimStats

JSON = "application/json"


class Api:
    """Request handlers bound to one simulator's state."""

    def __init__(self, population: Population, stats: SimStats, closing: asyncio.Event) -> None:
        cfg = population.config
        self.pop = population
        self.cfg = cfg
        self.stats = stats
        self.clock = population.clock
        self.auth = Authenticator(cfg, population.clock)
        limit = cfg.rate_limit
        self.limiter = SlidingWindowLimiter(limit) if limit is not None else None
        self.peak = WindowPeak()
        self.faults = FaultPlanner(cfg)
        self.closing = closing
        self.list_key = derive_key(cfg.seed, "page-token")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v2/accounts/{accountId}/calls/{callId}", self.get_call),
            web.get("/api/v2/accounts/{accountId}/calls", self.list_calls),
            web.post("/api/v1/oauth2/token", self.token),
            web.get("/_sim/stats", self.sim_stats),
            web.post("/_sim/reset", self.sim_reset),
        ]

    # Voice API ----------------------------------------------------------------------
    async def get_call(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.total_requests += 1
        call_id = request.match_info["callId"]
        # Counted as it appeared in the path (still percent-encoded), before any check.
        stats.served_by_id[request.raw_path.partition("?")[0].rpartition("/")[2]] += 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        try:
            refused = self._gate(request)
            if refused is not None:
                return refused
            plan = self.faults.next(call_id) if self.faults.enabled else None
            if plan is not None:
                early = await self._before(request, plan)
                if early is not None:
                    return early
            index = self.pop.index_of(call_id)
            body = (None if index is None
                    else self.pop.encoded(index, self.clock.now_ms(), call_id))
            if body is None:
                return await self._send(request, 404, errors.not_found(call_id), plan)
            return await self._send(request, 200, body, plan)
        finally:
            stats.in_flight -= 1

    async def list_calls(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.total_requests += 1
        stats.list_requests += 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        try:
            refused = self._gate(request)
            if refused is not None:
                return refused
            plan = None
            if self.faults.enabled:
                plan = self.faults.next("list?" + "&".join(sorted(request.query_string.split("&"))))
                early = await self._before(request, plan)
                if early is not None:
                    return early
            try:
                query = parse_query(request.query, self.list_key)
            except ListError as exc:
                return await self._send(request, 400, errors.bad_request(str(exc)), plan)
            now_ms = self.clock.now_ms()
            page = list_page(self.pop, query, now_ms, self.list_key)
            encoded = (self.pop.encoded_facts(f, now_ms) for f in page.calls)
            body = b"[" + b",".join(b for b in encoded if b is not None) + b"]"
            headers = {}
            if page.next_token is not None:
                # Absolute, and keeping every filter the client sent: follow it as given.
                link = request.url.update_query(pageToken=page.next_token)
                headers["Link"] = f'<{link}>; rel="next"'
            return await self._send(request, 200, body, plan, headers)
        finally:
            stats.in_flight -= 1

    def _gate(self, request: web.Request) -> web.Response | None:
        """401, 403 or 429 when the request may not proceed; None when admitted."""
        if not self.auth.api_allowed(request.headers.get("Authorization")):
            return self._reply(401, errors.UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        if request.match_info["accountId"] != self.cfg.account_id:
            return self._reply(403, errors.FORBIDDEN)
        now = time.monotonic()
        if self.limiter is not None:
            wait = self.limiter.try_admit(now)
            if wait is not None:
                self.stats.throttled += 1
                return self._reply(429, errors.TOO_MANY_REQUESTS,
                                   {"Retry-After": self._retry_after(wait)})
        self.peak.add(now)
        self.stats.max_window_requests = self.peak.peak
        return None

    def _retry_after(self, wait: float) -> str:
        if self.cfg.retry_after_http_date:
            # HTTP-date has whole seconds: round up so the date is never early.
            return email.utils.formatdate(math.ceil(time.time() + wait), usegmt=True)
        return str(retry_after_seconds(wait))

    async def _before(self, request: web.Request, plan: Plan) -> web.StreamResponse | None:
        """Latency, stalls and server errors: everything that happens before the answer."""
        if not await self._pause(plan.latency):
            return _drop(request)
        if plan.fault is Fault.SLOW:
            self.stats.slow += 1
            if not await self._pause(self.cfg.slow_seconds):
                return _drop(request)
        elif plan.fault is Fault.ERROR_500:
            return self._reply(500, errors.INTERNAL_ERROR)
        elif plan.fault is Fault.ERROR_503:
            return self._reply(503, errors.OVERLOADED)
        return None

    async def _send(self, request: web.Request, status: int, body: bytes, plan: Plan | None,
                    headers: dict[str, str] | None = None) -> web.StreamResponse:
        """Answer, unless the plan says to drop the connection or cut the body."""
        fault = plan.fault if plan is not None else None
        if fault is None or fault in (Fault.SLOW, Fault.ERROR_500, Fault.ERROR_503):
            return self._reply(status, body, headers)
        assert plan is not None
        cut = max(1, int(len(body) * plan.cut))
        if fault is Fault.TRUNCATE:
            if status != 200:
                return self._reply(status, body, headers)
            self.stats.truncated += 1
            # A complete HTTP response whose JSON simply stops: only the parser notices.
            return self._reply(status, body[:cut], headers)
        self.stats.resets += 1
        if fault is Fault.RESET_BEFORE_HEADERS:
            return _drop(request)
        # Headers promise the whole body; the connection dies part-way through it.
        response = web.StreamResponse(status=status, headers=headers)
        response.content_type = JSON
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[:cut])
        _abort(request)
        return response

    def _reply(self, status: int, body: bytes,
               headers: dict[str, str] | None = None) -> web.Response:
        self.stats.count_status(status)
        return web.Response(status=status, body=body, content_type=JSON, headers=headers)

    async def _pause(self, seconds: float) -> bool:
        """Sleep, but wake at once when the server shuts down (then return False)."""
        if seconds <= 0:
            return not self.closing.is_set()
        try:
            await asyncio.wait_for(self.closing.wait(), seconds)
        except TimeoutError:
            return True
        return False

    # OAuth2 -------------------------------------------------------------------------
    async def token(self, request: web.Request) -> web.Response:
        self.stats.token_requests += 1
        if not self.auth.client_allowed(request.headers.get("Authorization")):
            return web.Response(status=401, body=errors.INVALID_CLIENT, content_type=JSON,
                                headers={"WWW-Authenticate": 'Basic realm="oauth2"'})
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.Response(status=400, body=errors.UNSUPPORTED_GRANT, content_type=JSON)
        token, expires_in = self.auth.issue()
        self.stats.tokens_issued += 1
        body = orjson.dumps({"access_token": token, "token_type": "bearer",
                             "expires_in": expires_in})
        return web.Response(body=body, content_type=JSON,
                            headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    # Simulator control (outside /api) --------------------------------------------------
    async def sim_stats(self, request: web.Request) -> web.Response:
        include_ids = request.query.get("ids", "1") not in ("0", "false", "no")
        return web.Response(body=orjson.dumps(self.stats.as_dict(include_ids=include_ids)),
                            content_type=JSON)

    async def sim_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.Response(body=b'{"reset":true}', content_type=JSON)

    def reset_stats(self) -> None:
        self.stats.clear()
        self.peak.clear()


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _drop(request: web.Request) -> web.Response:
    """Kill the connection with no answer. aiohttp then fails to write the returned
    response, which it treats as a client disconnect: nothing is logged."""
    _abort(request)
    return web.Response(status=499)
