"""Notification payloads (pure) and delivery over real loopback HTTP to tests/receiver.py."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
import requests

from monitor import __version__
from monitor.alerts.notifiers import (
    FIRST_RETRY_S,
    MAX_RETRY_AFTER_S,
    MAX_RETRY_S,
    SLACK_HEADER_CHARS,
    SLACK_MAX_BLOCKS,
    SLACK_SECTION_CHARS,
    AlertSummary,
    Notification,
    deliver,
    log_line,
    redact_url,
    retry_delay_s,
    slack_payload,
    webhook_payload,
)
from monitor.domain import DriftKind, Severity
from tests.receiver import Receiver

OPENED = datetime(2026, 12, 1, 2, 0, 0, 123456, tzinfo=UTC)
HOSTILE = "<!channel> <script>alert(1)</script> & <https://evil.example|click> `tick`"


def make_alert(**overrides: Any) -> AlertSummary:
    fields: dict[str, Any] = {
        "alert_id": 17,
        "target": "gpt-4o",
        "kind": DriftKind.AVAILABILITY,
        "key": "errors",
        "severity": Severity.CRITICAL,
        "state": "open",
        "opened_at": OPENED,
        "resolved_at": None,
        "before": {"error_rate": 0.0},
        "after": {"error_rate": 0.8},
        "explanation": "8 of the last 10 probes failed.",
        "probe_uids": ("a1", "b2"),
    }
    fields.update(overrides)
    return AlertSummary(**fields)


def make_notification(*alerts: AlertSummary, change: str = "opened") -> Notification:
    return Notification(
        id="n-42",
        created_at=OPENED + timedelta(seconds=30),
        change=change,
        alerts=alerts or (make_alert(),),
    )


def mrkdwn_texts(payload: dict[str, Any]) -> list[str]:
    """Every string Slack will render, wherever it sits in the payload."""
    texts = [payload["text"]]
    for block in payload["blocks"]:
        if "text" in block:
            texts.append(block["text"]["text"])
        texts.extend(element["text"] for element in block.get("elements", []))
    return texts


# --- generic webhook ----------------------------------------------------------------------------


def test_webhook_payload_has_every_documented_field() -> None:
    resolved = make_alert(
        alert_id=18,
        target="claude",
        kind=DriftKind.LATENCY,
        key="total_ms",
        severity=Severity.WARNING,
        state="resolved",
        resolved_at=datetime(2026, 12, 1, 3, 30, tzinfo=timezone(timedelta(hours=1))),
        before=812.5,
        after=2400.0,
    )
    payload = webhook_payload(make_notification(make_alert(), resolved))

    assert payload == {
        "version": 1,
        "id": "n-42",
        "created_at": "2026-12-01T02:00:30.123Z",
        "change": "opened",
        "title": "2 targets: availability, latency opened (critical)",
        "severity": "critical",
        "alerts": [
            {
                "id": 17,
                "target": "gpt-4o",
                "kind": "availability",
                "key": "errors",
                "severity": "critical",
                "state": "open",
                "opened_at": "2026-12-01T02:00:00.123Z",
                "resolved_at": None,
                "before": {"error_rate": 0.0},
                "after": {"error_rate": 0.8},
                "explanation": "8 of the last 10 probes failed.",
                "probe_uids": ["a1", "b2"],
            },
            {
                "id": 18,
                "target": "claude",
                "kind": "latency",
                "key": "total_ms",
                "severity": "warning",
                "state": "resolved",
                "opened_at": "2026-12-01T02:00:00.123Z",
                "resolved_at": "2026-12-01T02:30:00.000Z",  # converted to UTC
                "before": 812.5,
                "after": 2400.0,
                "explanation": "8 of the last 10 probes failed.",
                "probe_uids": ["a1", "b2"],
            },
        ],
    }
    assert json.loads(json.dumps(payload)) == payload


@pytest.mark.parametrize(
    ("alerts", "change", "title"),
    [
        pytest.param([make_alert()], "opened", "gpt-4o: availability opened (critical)", id="one"),
        pytest.param(
            [make_alert(target=f"t{i}") for i in range(10)],
            "opened",
            "10 targets: availability opened (critical)",
            id="grouped-targets",
        ),
        pytest.param(
            [make_alert(severity=Severity.INFO), make_alert(kind=DriftKind.MODEL,
                                                            severity=Severity.WARNING)],
            "reminder",
            "gpt-4o: availability, model still open (warning)",
            id="one-target-two-kinds",
        ),
        pytest.param(
            [make_alert(state="resolved", resolved_at=OPENED)],
            "resolved",
            "gpt-4o: availability resolved (critical)",
            id="resolved",
        ),
    ],
)
def test_title_names_targets_kinds_change_and_highest_severity(
    alerts: list[AlertSummary], change: str, title: str
) -> None:
    assert make_notification(*alerts, change=change).title == title


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: make_notification(change="flapping"), id="unknown-change"),
        pytest.param(lambda: Notification("n", OPENED, "opened", ()), id="no-alerts"),
        pytest.param(lambda: make_notification(
            make_alert(opened_at=datetime(2026, 1, 1))), id="naive-opened-at"),
        pytest.param(lambda: Notification("n", datetime(2026, 1, 1), "opened", (make_alert(),)),
                     id="naive-created-at"),
        pytest.param(lambda: make_alert(state="acknowledged"), id="unknown-state"),
    ],
)
def test_malformed_notifications_are_refused(build: Any) -> None:
    with pytest.raises(ValueError):
        build()


# --- Slack --------------------------------------------------------------------------------------


def test_slack_payload_is_a_header_context_and_one_section_per_alert() -> None:
    payload = slack_payload(make_notification(make_alert(), make_alert(target="claude")))

    assert payload["text"] == "2 targets: availability opened (critical)"
    types = [block["type"] for block in payload["blocks"]]
    assert types == ["header", "context", "section", "section"]
    header = payload["blocks"][0]["text"]
    assert header == {"type": "plain_text", "text": payload["text"]}
    section = payload["blocks"][2]["text"]
    assert section["type"] == "mrkdwn"
    assert section["text"] == (
        '*gpt-4o* · availability `errors` · critical\n'
        '`{"error_rate": 0.0}` → `{"error_rate": 0.8}`\n'
        "8 of the last 10 probes failed."
    )
    assert "n-42" in payload["blocks"][1]["elements"][0]["text"]


def test_slack_escapes_control_characters_in_every_untrusted_value() -> None:
    alert = make_alert(target=HOSTILE, key=HOSTILE, before=HOSTILE, after=[HOSTILE],
                       explanation=HOSTILE)
    payload = slack_payload(replace(make_notification(alert), id=HOSTILE))

    for text in mrkdwn_texts(payload):
        # Only our own entities may contain "&"; no raw "<" or ">" can open a mention or link.
        assert "<" not in text and ">" not in text
        assert not re.search(r"&(?!amp;|lt;|gt;)", text)
    section = payload["blocks"][2]["text"]["text"]
    assert "&lt;!channel&gt;" in section
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; " in section
    key_span = section.splitlines()[0].split(" · ")[1]
    assert key_span.count("`") == 2  # one inner backtick would have closed the code span early


def test_slack_keeps_multiline_model_output_inside_its_code_span() -> None:
    alert = make_alert(before="pong", after="Sure!\nHere is the word:\n\tpong")
    section = slack_payload(make_notification(alert))["blocks"][2]["text"]["text"]
    assert section.splitlines()[1] == "`pong` → `Sure!\\nHere is the word:\\n\\tpong`"


def test_slack_truncates_long_values_within_slack_limits() -> None:
    long = "&" * 10_000  # escapes to five times its length
    alert = make_alert(target=long, key=long, before=long, after=long, explanation=long)
    payload = slack_payload(make_notification(alert))

    header = payload["blocks"][0]["text"]["text"]
    section = payload["blocks"][2]["text"]["text"]
    assert len(header) <= SLACK_HEADER_CHARS
    assert len(section) <= SLACK_SECTION_CHARS
    assert section.endswith("…")
    # A cut never lands inside an entity.
    assert not re.search(r"&(?!amp;)", section)


def test_slack_summarizes_alerts_beyond_fifty_blocks() -> None:
    alerts = [make_alert(alert_id=i, target=f"target-{i}") for i in range(120)]
    payload = slack_payload(make_notification(*alerts))

    blocks = payload["blocks"]
    assert len(blocks) == SLACK_MAX_BLOCKS
    shown = [b for b in blocks if b["type"] == "section" and "*target-" in b["text"]["text"]]
    assert len(shown) == SLACK_MAX_BLOCKS - 3  # header, context and the summary
    assert blocks[-1]["text"]["text"] == f"_and {120 - len(shown)} more alerts_"


def test_slack_fits_exactly_as_many_alerts_as_blocks_allow() -> None:
    alerts = [make_alert(target=f"t{i}") for i in range(SLACK_MAX_BLOCKS - 2)]
    blocks = slack_payload(make_notification(*alerts))["blocks"]
    assert len(blocks) == SLACK_MAX_BLOCKS
    assert "more alert" not in blocks[-1]["text"]["text"]


# --- log ----------------------------------------------------------------------------------------


def test_log_line_is_one_line_whatever_the_model_said() -> None:
    evil = "ok\nERROR fake entry\r\x1b[31mred\u2028\x7f"
    line = log_line(make_notification(make_alert(explanation=evil, after=evil, target=evil)))

    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "\u2028" not in line and "\x7f" not in line
    assert line.isprintable()
    assert line.startswith('notification "n-42" opened critical: 1 alert | ')
    assert r'"ok\nERROR fake entry\r\u001b[31mred\u2028\u007f"' in line


def test_log_line_names_the_first_alerts_and_counts_the_rest() -> None:
    line = log_line(make_notification(*[make_alert(target=f"t{i}") for i in range(13)]))
    assert 'target="t9"' in line and 't10"' not in line
    assert line.endswith("| and 3 more")


# --- URL redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("https://hooks.slack.com/services/T0/B0/XXXXSECRET", "https://hooks.slack.com/…",
                     id="slack-token-in-path"),
        pytest.param("https://example.com/hook?token=abc", "https://example.com/…", id="query"),
        pytest.param("http://user:pw@example.com:8080/x", "http://example.com:8080/…",
                     id="credentials"),
        pytest.param("http://[::1]:9000/hook", "http://[::1]:9000/…", id="ipv6"),
        pytest.param("not a url", "<invalid URL>", id="garbage"),
        pytest.param("http://[::1/x", "<invalid URL>", id="unparseable"),
    ],
)
def test_redact_url_keeps_only_scheme_and_host(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --- delivery over loopback ---------------------------------------------------------------------

SECRET_PATH = "/services/T000/B000/s3cr3tTOKEN"
SECRET_QUERY = "token=qu3rySECRET"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def hook(receiver: Receiver) -> str:
    return f"{receiver.url}{SECRET_PATH}?{SECRET_QUERY}"


def send(session: requests.Session, url: str, timeout_s: float = 5.0) -> Any:
    body = webhook_payload(make_notification())
    return deliver(session, url, body, idempotency_key="n-42", timeout_s=timeout_s)


def assert_no_secret(error: str | None) -> None:
    assert error is not None
    assert "s3cr3tTOKEN" not in error and "qu3rySECRET" not in error and "/services" not in error


def test_delivered_with_json_idempotency_key_and_user_agent(
    receiver: Receiver, session: requests.Session
) -> None:
    outcome = send(session, hook(receiver))

    assert outcome.ok and outcome.status == 200 and outcome.error is None
    assert not outcome.retryable
    headers, body, path = receiver.wait_for(1)[0]
    assert path == f"{SECRET_PATH}?{SECRET_QUERY}"
    assert body == webhook_payload(make_notification())
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"monitor/{__version__}"
    assert headers["idempotency-key"] == "n-42"
    assert headers["x-monitor-notification-id"] == "n-42"


def test_server_error_is_retryable_and_names_only_the_host(
    receiver: Receiver, session: requests.Session
) -> None:
    receiver.fail_next(1, 503)
    outcome = send(session, hook(receiver))

    assert (outcome.ok, outcome.status, outcome.retryable) == (False, 503, True)
    assert outcome.error == f"http://127.0.0.1:{receiver.port}/… answered HTTP 503: " + (
        '{"error":"scripted failure"}'
    )
    assert_no_secret(outcome.error)


@pytest.mark.parametrize("status", [408, 429, 500, 502])
def test_statuses_worth_retrying(
    receiver: Receiver, session: requests.Session, status: int
) -> None:
    receiver.fail_next(1, status)
    assert send(session, hook(receiver)).retryable


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 301])
def test_refusals_are_not_retried(
    receiver: Receiver, session: requests.Session, status: int
) -> None:
    receiver.fail_next(1, status, {"Location": f"{receiver.url}/elsewhere"})
    outcome = send(session, hook(receiver))

    assert (outcome.ok, outcome.status, outcome.retryable) == (False, status, False)
    assert len(receiver.wait_for(1)) == 1  # a redirect is not followed
    assert_no_secret(outcome.error)


def test_retry_after_seconds_is_passed_on(receiver: Receiver, session: requests.Session) -> None:
    receiver.fail_next(1, 429, {"Retry-After": "30"})
    outcome = send(session, hook(receiver))
    assert outcome.retryable and outcome.retry_after_s == 30.0


def test_retry_after_http_date_is_passed_on(
    receiver: Receiver, session: requests.Session
) -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    receiver.fail_next(1, 503, {"Retry-After": format_datetime(later, usegmt=True)})
    outcome = send(session, hook(receiver))
    assert outcome.retry_after_s == pytest.approx(120, abs=3)


def test_receiver_down_is_a_retryable_connection_error_without_the_url(
    receiver: Receiver, session: requests.Session
) -> None:
    receiver.down()
    outcome = send(session, hook(receiver))

    assert (outcome.ok, outcome.status, outcome.retryable) == (False, None, True)
    assert outcome.error == f"http://127.0.0.1:{receiver.port}/…: Connection refused"
    assert_no_secret(outcome.error)

    receiver.up()
    assert send(session, hook(receiver)).ok
    assert receiver.wait_for(1)[0][2] == f"{SECRET_PATH}?{SECRET_QUERY}"


def test_receiver_answering_503_while_down_then_recovering(
    receiver: Receiver, session: requests.Session
) -> None:
    receiver.down("503")
    assert send(session, hook(receiver)).status == 503
    receiver.up()
    assert send(session, hook(receiver)).ok
    assert receiver.statuses == [503, 200]
    # Both attempts carried the same key: the receiver can tell the second is a retry.
    assert {headers["idempotency-key"] for headers, _, _ in receiver.received} == {"n-42"}


def test_slow_receiver_is_a_retryable_timeout(
    receiver: Receiver, session: requests.Session
) -> None:
    receiver.slow(2.0)
    outcome = send(session, hook(receiver), timeout_s=0.2)

    assert (outcome.ok, outcome.status, outcome.retryable) == (False, None, True)
    assert outcome.error == f"http://127.0.0.1:{receiver.port}/…: Read timed out after 200 ms"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("hooks.slack.com/services/T0/B0/s3cr3tTOKEN", id="no-scheme"),
        pytest.param("ftp://example.com/services/s3cr3tTOKEN", id="wrong-scheme"),
        pytest.param("http:///services/s3cr3tTOKEN", id="no-host"),
    ],
)
def test_an_unusable_url_is_not_retried(session: requests.Session, url: str) -> None:
    outcome = send(session, url)
    assert (outcome.ok, outcome.retryable) == (False, False)
    assert_no_secret(outcome.error)


def test_a_body_that_is_not_json_is_a_bug_not_an_outcome(session: requests.Session) -> None:
    with pytest.raises(ValueError):
        deliver(session, "http://127.0.0.1:9/x", {"x": float("nan")}, idempotency_key="n",
                timeout_s=1)


# --- retry schedule -----------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [1, 2, 3, 5, 8, 9, 20, 1000])
def test_retry_delay_stays_between_first_retry_and_the_cap(attempts: int) -> None:
    rng = random.Random(attempts)
    ceiling = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** (attempts - 1))
    delays = [retry_delay_s(attempts, rng=rng) for _ in range(200)]
    assert all(FIRST_RETRY_S <= d <= ceiling for d in delays)


def test_retry_delay_starts_at_two_seconds_and_spreads_out() -> None:
    rng = random.Random(7)
    assert retry_delay_s(1, rng=rng) == FIRST_RETRY_S
    late = [retry_delay_s(30, rng=rng) for _ in range(200)]
    assert max(late) > MAX_RETRY_S * 0.9 and min(late) < MAX_RETRY_S * 0.5  # jittered


def test_retry_delay_is_repeatable_with_a_seed() -> None:
    first = [retry_delay_s(n, rng=random.Random(1)) for n in range(1, 12)]
    again = [retry_delay_s(n, rng=random.Random(1)) for n in range(1, 12)]
    assert first == again


def test_retry_delay_honours_retry_after_up_to_an_hour() -> None:
    rng = random.Random(3)
    assert retry_delay_s(1, 90.0, rng=rng) == 90.0
    assert retry_delay_s(1, 86_400.0, rng=rng) == MAX_RETRY_AFTER_S
    assert retry_delay_s(1, 0.0, rng=rng) == FIRST_RETRY_S


def test_retries_keep_coming_through_an_hour_long_outage() -> None:
    rng = random.Random(11)
    elapsed_s, attempts = 0.0, 0
    while elapsed_s < 3 * 3600:
        attempts += 1
        delay = retry_delay_s(attempts, rng=rng)
        assert delay <= MAX_RETRY_S  # never a gap longer than five minutes
        elapsed_s += delay
    assert attempts > 3 * 3600 / MAX_RETRY_S
