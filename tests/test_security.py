"""Secrets never leave the process, and credentials only go where they belong."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from auditor.config import ConfigError, check_url
from auditor.simulator import SimConfig, Simulator
from tests.test_cli import auditor, sim_args
from tests.test_pipeline import SIM_NOW, write_ids

CLIENT_SECRET = "cs-7f3a9-TOP-SECRET-client"
PASSWORD = "pw-4b1c2-TOP-SECRET-password"


def _forms(user: str, secret: str) -> list[bytes]:
    """The secret itself and the Basic header that would carry it."""
    return [secret.encode(), base64.b64encode(f"{user}:{secret}".encode())]


def _everything_written(*roots: Path) -> bytes:
    blob = b""
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                blob += path.read_bytes()
    return blob


async def test_no_secret_in_output_errors_or_files(tmp_path: Path) -> None:
    config = SimConfig(
        calls=300,
        seed=50,
        now=SIM_NOW,
        client_secret=CLIENT_SECRET,
        password=PASSWORD,
        error_rate=0.05,
    )
    async with Simulator(config, host="127.0.0.1", port=0) as sim:
        source = write_ids(tmp_path / "ids.csv", [*sim.population.ids(), "c-bad/../id"])
        base = {k: v for k, v in os.environ.items() if not k.startswith("BW_")}
        oauth = dict(
            base,
            BW_ACCOUNT_ID=config.account_id,
            BW_CLIENT_ID=config.client_id,
            BW_CLIENT_SECRET=CLIENT_SECRET,
        )
        basic = dict(
            base, BW_ACCOUNT_ID=config.account_id, BW_USERNAME=config.username, BW_PASSWORD=PASSWORD
        )
        printed = b""
        runs = [
            (oauth, 0, "ok"),  # a good OAuth2 run
            (basic, 0, "basic"),  # a good legacy Basic run
            (dict(oauth, BW_CLIENT_ID="someone-else"), 3, "oauth-refused"),
            (dict(basic, BW_USERNAME="nobody"), 3, "basic-refused"),
        ]
        for env, expected, name in runs:
            code, out, err = await auditor(
                "run",
                str(source),
                "--output",
                str(tmp_path / name),
                "--rate",
                "1000",
                *sim_args(sim),
                env=env,
            )
            assert code == expected, err
            assert "Traceback" not in err
            printed += out.encode() + err.encode()
        code, out, err = await auditor("summary", str(tmp_path / "ok"))
        printed += out.encode() + err.encode()

    haystack = printed + _everything_written(tmp_path)
    for needle in _forms(config.client_id, CLIENT_SECRET) + _forms(config.username, PASSWORD):
        assert needle not in haystack


@pytest.mark.parametrize(
    "url",
    [
        "http://voice.bandwidth.com/api/v2",
        "http://10.0.0.8/api/v2",
        "ftp://127.0.0.1/x",
        "http://localhost.evil.com/api",
    ],
)
def test_plain_http_only_to_loopback(url: str) -> None:
    with pytest.raises(ConfigError):
        check_url(url, "--base-url")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/api/v2",
        "http://localhost/api",
        "http://[::1]:9/x",
        "https://voice.bandwidth.com/api/v2",
    ],
)
def test_https_anywhere_and_http_to_loopback_are_fine(url: str) -> None:
    check_url(url, "--base-url")


def test_url_with_credentials_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        check_url("http://user:hunter2@example.com/api", "--base-url")
    assert "hunter2" not in str(caught.value)
