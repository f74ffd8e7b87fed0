from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from auditor.retry import RetryPolicy, Verdict, classify, parse_retry_after

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.OK),
        (404, Verdict.NOT_FOUND),
        (429, Verdict.THROTTLED),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
        (401, Verdict.AUTH),
        (403, Verdict.AUTH),
        (400, Verdict.FAIL),
        (405, Verdict.FAIL),
        (415, Verdict.FAIL),
        (302, Verdict.FAIL),
    ],
)
def test_classify(status: int, verdict: Verdict) -> None:
    assert classify(status) is verdict


def _http_date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        (" 12 ", 12.0),
        ("0", None),
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("1.5", None),
    ],
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


def test_retry_after_http_date() -> None:
    assert parse_retry_after(_http_date(NOW + 7), NOW) == pytest.approx(7.0)
    assert parse_retry_after(_http_date(NOW - 7), NOW) is None  # past: no hint
    assert parse_retry_after("Tue, 99 Foo 2026 99:99:99 GMT", NOW) is None


def test_retry_after_is_capped_by_policy() -> None:
    policy = RetryPolicy(max_retry_after=120.0)
    assert policy.throttle_wait(86_400.0, 1) == 120.0
    assert policy.throttle_wait(2.0, 1) == 2.0
    assert 0 < policy.throttle_wait(None, 1) <= policy.base_delay * 2


def test_full_jitter_backoff_stays_within_the_exponential_ceiling() -> None:
    policy = RetryPolicy(base_delay=0.25, max_delay=10.0)
    rng = random.Random(1)
    for failures, ceiling in ((1, 0.25), (2, 0.5), (3, 1.0), (10, 10.0), (60, 10.0)):
        delays = [policy.backoff(failures, rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.9  # spread over the whole range, not a fixed step
