"""Header capture, redaction and rate-limit parsing: pure functions, no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.domain import RateLimits
from monitor.durations import parse_ms, parse_seconds
from monitor.probe import headers

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("1s", 1.0, id="seconds"),
        pytest.param("6m0s", 360.0, id="minutes"),
        pytest.param("120ms", 0.12, id="milliseconds"),
        pytest.param("1h2m3.5s", 3723.5, id="hours-fraction"),
        pytest.param("23h18m29.144s", 83909.144, id="day-window"),
        pytest.param("0s", 0.0, id="zero-duration"),
        pytest.param("7", 7.0, id="azure-integer-seconds"),
        pytest.param("0", 0.0, id="azure-zero"),
        pytest.param("2.5", 2.5, id="fractional-seconds"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("", None, id="empty"),
        pytest.param("5x", None, id="unknown-unit"),
    ],
)
def test_durations_parse_as_seconds(text: str, seconds: float | None) -> None:
    result = parse_seconds(text)
    assert result == pytest.approx(seconds) if seconds is not None else result is None


@pytest.mark.parametrize(
    ("text", "ms"),
    [("250ms", 250), ("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000), ("1m30s", 90_000)],
)
def test_config_durations_parse_as_milliseconds(text: str, ms: int) -> None:
    assert parse_ms(text) == ms


def test_config_durations_need_a_unit() -> None:
    assert parse_ms("30") is None


def test_openai_fixture_rate_limits_parse_into_numbers() -> None:
    exchange = json.loads((FIXTURES / "openai-chat-completion.json").read_text())
    captured = headers.capture(exchange["response_headers"].items())
    assert headers.rate_limits(captured) == RateLimits(
        limit_requests=500,
        limit_tokens=30000,
        remaining_requests=499,
        remaining_tokens=29981,
        reset_requests_s=pytest.approx(0.12),
        reset_tokens_s=pytest.approx(0.038),
    )
    assert headers.processing_ms(captured) == 861.0


def test_azure_placeholders_are_not_quantities() -> None:
    limits = headers.rate_limits(
        {
            "x-ratelimit-remaining-requests": "-1",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-requests": "-1",
            "x-ratelimit-reset-tokens": "0",
        }
    )
    assert limits.remaining_requests is None
    assert limits.remaining_tokens == 0
    assert limits.reset_requests_s is None
    assert limits.reset_tokens_s == 0.0


def test_missing_headers_stay_missing() -> None:
    assert headers.rate_limits({}) == RateLimits()
    assert headers.processing_ms({}) is None
    assert headers.retry_after_s({}) is None


def test_litellm_headers_without_reset_pair() -> None:
    lines = (FIXTURES / "compatible-servers/litellm-proxy/chat.headers").read_text().splitlines()
    pairs = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
    limits = headers.rate_limits(headers.capture(pairs))  # type: ignore[arg-type]
    assert limits.limit_requests == 600
    assert limits.remaining_tokens == 99970
    assert limits.reset_requests_s is None and limits.reset_tokens_s is None


@pytest.mark.parametrize(
    ("values", "seconds"),
    [
        pytest.param({"retry-after": "20"}, 20.0, id="seconds"),
        pytest.param({"retry-after-ms": "1500", "retry-after": "2"}, 1.5, id="ms-wins"),
        pytest.param({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0, id="past-date"),
        pytest.param({"retry-after": "later"}, None, id="garbage"),
    ],
)
def test_retry_after(values: dict[str, str], seconds: float | None) -> None:
    assert headers.retry_after_s(values) == seconds


def test_credentials_and_cookies_are_redacted() -> None:
    captured = headers.capture(
        [
            ("Set-Cookie", "__cf_bm=abc; path=/"),
            ("Authorization", "Bearer sk-live"),
            ("api-key", "azure-key"),
            ("x-litellm-api-key", "sk-proxy"),
            ("x-ratelimit-limit-tokens", "30000"),
            ("x-echo", "you sent sk-secret-value"),
        ],
        secrets=["sk-secret-value"],
    )
    assert captured == {
        "set-cookie": "[redacted]",
        "authorization": "[redacted]",
        "api-key": "[redacted]",
        "x-litellm-api-key": "[redacted]",
        "x-ratelimit-limit-tokens": "30000",
        "x-echo": "you sent [redacted]",
    }


def test_repeated_headers_are_comma_joined() -> None:
    assert headers.capture([("Vary", "Origin"), ("vary", "Accept")]) == {"vary": "Origin, Accept"}
