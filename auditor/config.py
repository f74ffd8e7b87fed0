"""Run configuration and credentials, with secrets that never print.

Everything the library entry point :func:`auditor.run_audit` needs lives in
:class:`AuditConfig`; the CLI only parses flags and the environment into one.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

DEFAULT_BASE_URL: Final = "https://voice.bandwidth.com/api/v2"
DEFAULT_TOKEN_URL: Final = "https://api.bandwidth.com/api/v1/oauth2/token"
#: Bandwidth documents no read limit; 20 req/s is a conservative start that a user raises.
DEFAULT_RATE: Final = 20.0

_ACCOUNT_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ConfigError(Exception):
    """A setting is missing or unsafe; the message is one line for the user (exit 2)."""


class Secret:
    """A string that shows as ``'***'`` in repr, str and f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class OAuth2Credentials:
    """OAuth2 client credentials: the supported method since 2026-12-02."""

    client_id: str
    client_secret: Secret


@dataclass(frozen=True)
class BasicCredentials:
    """Legacy HTTP Basic (username and password), retired by Bandwidth on 2026-12-02."""

    username: str
    password: Secret


Credentials = OAuth2Credentials | BasicCredentials


def credentials_from_env(env: Mapping[str, str] = os.environ) -> Credentials:
    """OAuth2 from BW_CLIENT_ID/BW_CLIENT_SECRET, else Basic from BW_USERNAME/BW_PASSWORD."""
    client_id, client_secret = env.get("BW_CLIENT_ID"), env.get("BW_CLIENT_SECRET")
    if client_id and client_secret:
        return OAuth2Credentials(client_id, Secret(client_secret))
    username, password = env.get("BW_USERNAME"), env.get("BW_PASSWORD")
    if username and password:
        return BasicCredentials(username, Secret(password))
    raise ConfigError(
        "no credentials: set BW_CLIENT_ID and BW_CLIENT_SECRET (OAuth2), "
        "or legacy BW_USERNAME and BW_PASSWORD"
    )


@dataclass(frozen=True)
class AuditConfig:
    """Everything one audit run needs.  ``repr`` never shows a secret."""

    inputs: Sequence[str]
    output: str
    account_id: str
    credentials: Credentials
    base_url: str = DEFAULT_BASE_URL
    token_url: str = DEFAULT_TOKEN_URL
    rate: float | None = DEFAULT_RATE
    #: None means automatic: sized from observed latency by Little's law, up to max_concurrency.
    concurrency: int | None = None
    max_concurrency: int = 256
    id_column: str | None = None
    max_attempts: int = 6
    timeout: float = 30.0
    connect_timeout: float = 10.0
    fresh: bool = False
    progress: bool = True
    row_group_rows: int = 10_000
    flush_seconds: float = 30.0
    max_body_bytes: int = 1 << 20
    #: None: flat part files; "date": Hive folders call_date=YYYY-MM-DD (auditor.partition)
    partition_by: str | None = None
    #: "lean": Get Call State over auditor.http1 (a third of aiohttp's CPU per request);
    #: "aiohttp": over the aiohttp session, like List Calls and tokens always are
    http_client: str = "lean"
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_url(self.base_url, "--base-url")
        check_url(self.token_url, "--token-url")
        if not _ACCOUNT_ID.fullmatch(self.account_id or ""):
            raise ConfigError(
                "set the account id with --account-id or BW_ACCOUNT_ID (digits, e.g. 9900000)"
            )
        if self.rate is not None and self.rate <= 0:
            raise ConfigError("--rate must be a positive number of requests per second")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("--concurrency must be a positive integer or 'auto'")
        if self.max_attempts < 1:
            raise ConfigError("--max-attempts must be at least 1")
        if self.row_group_rows < 1:
            raise ConfigError("--row-group-rows must be at least 1")
        if self.partition_by not in (None, "date"):
            raise ConfigError("--partition-by must be 'date' or 'none'")
        if self.http_client not in ("lean", "aiohttp"):
            raise ConfigError("--http-client must be 'lean' or 'aiohttp'")
        if self.timeout <= 0:
            raise ConfigError("--timeout must be a positive number of seconds")


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, flag: str) -> None:
    """Only https, except plain http to a loopback host (the simulator)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return
    if parts.scheme == "http":
        raise ConfigError(f"{flag}: plain http:// is allowed only to loopback; use https://")
    # The URL itself is not echoed: it may carry user:password@ in it.
    raise ConfigError(f"{flag}: expected an https:// URL")
