"""Who may call the API: OAuth2 client-credentials tokens, and legacy Basic auth."""

from __future__ import annotations

import base64
import binascii
import hmac

from auditor.simulator.clock import SimClock
from auditor.simulator.config import SimConfig
from auditor.simulator.rand import derive_key, hex_digest


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def parse_basic(header: str) -> tuple[str, str] | None:
    """``Basic base64(user:pass)`` -> (user, pass); None when malformed."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class Authenticator:
    """Issues bearer tokens and checks the ``Authorization`` header of API requests.

    Tokens expire on the simulator clock, so a test expires one with ``advance()``.
    """

    __slots__ = ("_basic", "_cfg", "_clock", "_issued", "_key", "_tokens")

    def __init__(self, cfg: SimConfig, clock: SimClock) -> None:
        self._cfg = cfg
        self._clock = clock
        self._key = derive_key(cfg.seed, "tokens")
        self._tokens: dict[str, float] = {}  # token -> expiry (simulated epoch seconds)
        self._issued = 0
        # Exact header a well-behaved client sends: the hot path is one string compare.
        self._basic = basic_header(cfg.username, cfg.password)

    def api_allowed(self, header: str | None) -> bool:
        """True for a live bearer token or the legacy username:password."""
        if header is None:
            return False
        if header[:7].lower() == "bearer ":
            expiry = self._tokens.get(header[7:])
            return expiry is not None and self._clock.now() < expiry
        if header == self._basic:
            return True
        creds = parse_basic(header)
        return creds is not None and _same(creds, (self._cfg.username, self._cfg.password))

    def client_allowed(self, header: str | None) -> bool:
        """True when *header* is Basic client_id:client_secret (token endpoint)."""
        creds = parse_basic(header) if header else None
        return creds is not None and _same(creds, (self._cfg.client_id, self._cfg.client_secret))

    def issue(self) -> tuple[str, int]:
        """A new bearer token and its lifetime in whole seconds."""
        now = self._clock.now()
        # Forget expired tokens so a long demo does not accumulate them.
        for token in [t for t, exp in self._tokens.items() if exp <= now]:
            del self._tokens[token]
        self._issued += 1
        token = "sim." + hex_digest(self._key, b"%d" % self._issued, 24)
        self._tokens[token] = now + self._cfg.token_ttl
        return token, max(1, round(self._cfg.token_ttl))


def _same(given: tuple[str, str], expected: tuple[str, str]) -> bool:
    user_ok = hmac.compare_digest(given[0].encode(), expected[0].encode())
    pass_ok = hmac.compare_digest(given[1].encode(), expected[1].encode())
    return user_ok and pass_ok
