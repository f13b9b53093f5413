"""What a notification says on each channel, and one attempt at delivering it over HTTP.

- The builders (`webhook_payload`, `slack_payload`, `log_line`) are pure: a Notification in, a body
  or a line out. Any string in an alert may carry model output or server text, so each channel
  escapes it its own way: JSON for webhooks, `&amp; &lt; &gt;` for Slack, JSON escapes in the log.
- `deliver` makes one POST and never raises for a network or HTTP failure. It returns a
  DeliveryOutcome that says whether trying again can help; the engine records it, waits
  `retry_delay_s` and decides when to give up.
- Webhook URLs are secrets (a Slack URL carries its token in the path), so only `redact_url(url)`
  appears in a message. requests puts the whole URL in its exception text, so messages are built
  from the exception's type and never from its text.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

import requests

from monitor import __version__
from monitor.domain import AlertChange, AlertState, DriftKind, Severity
from monitor.durations import parse_seconds
from monitor.probe import classify_exception
from monitor.render.text import safe_text

WEBHOOK_VERSION: Final = 1
USER_AGENT: Final = f"monitor/{__version__}"
# "test" is `monitor alerts test`: a notification about no alert, to try a channel out.
CHANGES: Final = (*(change.value for change in AlertChange), "test")
STATES: Final = (AlertState.OPEN.value, AlertState.RESOLVED.value)  # a pending one is never sent

# Backoff: the first retry comes quickly (a blip), later ones spread out under the ceiling so a
# receiver that was down for an hour is not hit by every queued notification at once.
FIRST_RETRY_S: Final = 2.0
MAX_RETRY_S: Final = 300.0
# A Retry-After is honoured up to an hour: a receiver asking for a day would silence alerts.
MAX_RETRY_AFTER_S: Final = 3600.0

_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
_VERB = {"opened": "opened", "resolved": "resolved", "reminder": "still open", "test": "test"}


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got {value.isoformat()}")


@dataclass(frozen=True)
class AlertSummary:
    """One alert as a notification shows it."""

    alert_id: int
    target: str
    kind: DriftKind
    key: str  # the condition within target and kind, e.g. "new:fp_abc" or "total_ms"
    severity: Severity
    state: str  # "open" | "resolved"
    opened_at: datetime  # aware
    resolved_at: datetime | None  # aware; set once resolved
    before: Any  # JSON-able
    after: Any  # JSON-able
    explanation: str
    probe_uids: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {self.state!r}")
        _require_aware("opened_at", self.opened_at)
        _require_aware("resolved_at", self.resolved_at)


@dataclass(frozen=True)
class Notification:
    """One message to every channel: one alert, or several that changed together."""

    id: str  # stable across retries: receivers dedupe on it
    created_at: datetime  # aware
    change: str  # "opened" | "resolved" | "reminder"
    alerts: tuple[AlertSummary, ...]

    def __post_init__(self) -> None:
        if self.change not in CHANGES:
            raise ValueError(f"change must be one of {CHANGES}, got {self.change!r}")
        if not self.alerts and self.change != "test":
            raise ValueError("a notification needs at least one alert")
        _require_aware("created_at", self.created_at)

    @property
    def severity(self) -> Severity:
        """The highest severity among the alerts (info for a test)."""
        return max((a.severity for a in self.alerts), key=_SEVERITY_RANK.__getitem__,
                   default=Severity.INFO)

    @property
    def title(self) -> str:
        """A headline: "gpt-4o: latency opened (warning)", "3 targets: availability opened (critical)"."""
        if self.change == "test":
            return "monitor: test notification"
        targets = _unique(a.target for a in self.alerts)
        who = targets[0] if len(targets) == 1 else f"{len(targets)} targets"
        kinds = ", ".join(_unique(a.kind.value for a in self.alerts))
        return f"{who}: {kinds} {_VERB[self.change]} ({self.severity.value})"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def iso(moment: datetime) -> str:
    """UTC with millisecond precision and a Z: one fixed-width form every parser reads."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- generic webhook --------------------------------------------------------------------------


def webhook_payload(n: Notification) -> dict[str, Any]:
    """The generic JSON body (version 1, documented in docs/alerts.md)."""
    return {
        "version": WEBHOOK_VERSION,
        "id": n.id,
        "created_at": iso(n.created_at),
        "change": n.change,
        "title": n.title,
        "severity": n.severity.value,
        "alerts": [
            {
                "id": a.alert_id,
                "target": a.target,
                "kind": a.kind.value,
                "key": a.key,
                "severity": a.severity.value,
                "state": a.state,
                "opened_at": iso(a.opened_at),
                "resolved_at": iso(a.resolved_at) if a.resolved_at is not None else None,
                "before": a.before,
                "after": a.after,
                "explanation": a.explanation,
                "probe_uids": list(a.probe_uids),
            }
            for a in n.alerts
        ],
    }


# --- Slack ------------------------------------------------------------------------------------

# Slack's own limits: it refuses a message that exceeds them.
SLACK_MAX_BLOCKS: Final = 50
SLACK_HEADER_CHARS: Final = 150
SLACK_SECTION_CHARS: Final = 3000
# Our shares of one section, chosen so their sum (plus markup) stays under SLACK_SECTION_CHARS.
_TARGET_CHARS = 150
_KEY_CHARS = 200
_VALUE_CHARS = 500  # each of before and after
_EXPLANATION_CHARS = 1500
_SLACK_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _slack(text: str, limit: int) -> str:
    """`text` with Slack's control characters escaped, at most `limit` characters once escaped.

    Escaping comes first and the cut falls between escapes, so "&amp;" is never cut into "&am"."""
    pieces = [_SLACK_ESCAPES.get(char, char) for char in text]
    if sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    kept: list[str] = []
    used = 1  # the ellipsis
    for piece in pieces:
        if used + len(piece) > limit:
            break
        kept.append(piece)
        used += len(piece)
    return "".join(kept) + "…"


def _slack_code(value: Any, limit: int) -> str:
    """A value in an inline code span: a string as it is, anything else as JSON.

    A backtick or a line break inside would end the span early, so neither survives as such."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text).replace("`", "ˋ")
    return "`" + _slack(text, limit) + "`"


def _slack_section(a: AlertSummary) -> dict[str, Any]:
    state = " · resolved" if a.state == AlertState.RESOLVED else ""
    text = (
        f"*{_slack(a.target, _TARGET_CHARS)}* · {a.kind.value} {_slack_code(a.key, _KEY_CHARS)}"
        f" · {a.severity.value}{state}\n"
        f"{_slack_code(a.before, _VALUE_CHARS)} → {_slack_code(a.after, _VALUE_CHARS)}\n"
        f"{_slack(a.explanation, _EXPLANATION_CHARS)}"
    )
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def slack_payload(n: Notification) -> dict[str, Any]:
    """An incoming-webhook message: a header, a context line and one section per alert."""
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _slack(n.title, SLACK_HEADER_CHARS)},
        },
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": _slack(f"{n.change} at {iso(n.created_at)} · id {n.id}", 300),
                }
            ],
        },
    ]
    room = SLACK_MAX_BLOCKS - len(blocks)
    shown = n.alerts if len(n.alerts) <= room else n.alerts[: room - 1]
    blocks.extend(_slack_section(a) for a in shown)
    if len(shown) < len(n.alerts):
        more = len(n.alerts) - len(shown)
        text = f"_and {more} more alert{'s' if more > 1 else ''}_"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    return {"text": _slack(n.title, SLACK_HEADER_CHARS), "blocks": blocks}


# --- log --------------------------------------------------------------------------------------

_LOG_ALERTS = 10  # a line naming a hundred targets helps nobody; the webhook carries them all
_LOG_VALUE_CHARS = 200


def _log_value(value: Any) -> str:
    """JSON with every non-ASCII and control character escaped: nothing can break the line."""
    text = json.dumps(value, ensure_ascii=True, default=str).replace("\x7f", "\\u007f")
    return text if len(text) <= _LOG_VALUE_CHARS else text[: _LOG_VALUE_CHARS - 3] + "..."


def log_line(n: Notification) -> str:
    """One line for the log notifier."""
    count = f"{len(n.alerts)} alert{'' if len(n.alerts) == 1 else 's'}"
    parts = [f"notification {_log_value(n.id)} {n.change} {n.severity.value}: {count}"]
    for a in n.alerts[:_LOG_ALERTS]:
        parts.append(
            f"target={_log_value(a.target)} kind={a.kind.value} key={_log_value(a.key)} "
            f"severity={a.severity.value} state={a.state} before={_log_value(a.before)} "
            f"after={_log_value(a.after)} explanation={_log_value(a.explanation)}"
        )
    if len(n.alerts) > _LOG_ALERTS:
        parts.append(f"and {len(n.alerts) - _LOG_ALERTS} more")
    return " | ".join(parts)


# --- delivery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one delivery attempt came to."""

    ok: bool
    status: int | None  # None when no response arrived
    error: str | None  # one sentence naming the URL only as redact_url() shows it
    retryable: bool  # whether the same request could succeed later
    retry_after_s: float | None = None  # the receiver's Retry-After, in seconds from now


_HOST = re.compile(r"[A-Za-z0-9.\-_:\[\]%]+")


def redact_url(url: str) -> str:
    """`scheme://host[:port]/…`: enough to tell webhooks apart, without credentials, path or query."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.netloc.rpartition("@")[2]  # user:password@ is a credential too
    if not parts.scheme.isalpha() or not _HOST.fullmatch(host):
        return "<invalid URL>"
    return f"{parts.scheme}://{host}/…"


# Raised before anything is sent: the same request can never succeed.
_UNSENDABLE: dict[type[requests.RequestException], str] = {
    requests.exceptions.MissingSchema: "the webhook URL is not an http(s) URL",
    requests.exceptions.InvalidSchema: "the webhook URL is not an http(s) URL",
    requests.exceptions.InvalidURL: "the webhook URL is not a valid URL",
    requests.exceptions.InvalidHeader: "a header value cannot be sent (check the notification id)",
}
_SNIPPET_BYTES = 512  # of a refusal's body: Slack explains itself in a word ("invalid_token")


def deliver(
    session: requests.Session,
    url: str,
    body: dict[str, Any],
    *,
    idempotency_key: str,
    timeout_s: float,
) -> DeliveryOutcome:
    """POST `body` as JSON to `url` once. Raises only if `body` is not JSON (a bug)."""
    where = redact_url(url)
    data = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Idempotency-Key": idempotency_key,
        "X-Monitor-Notification-Id": idempotency_key,
    }
    try:
        # No redirects: a POST turned into a GET elsewhere is not a delivery, and the new
        # location is a URL we would have to keep secret as well.
        with session.post(
            url,
            data=data.encode(),
            headers=headers,
            timeout=timeout_s,
            allow_redirects=False,
            stream=True,
        ) as response:
            status = response.status_code
            retry_after_s = _retry_after_s(response.headers.get("Retry-After"))
            snippet = b"" if 200 <= status < 300 else _read_snippet(response)
    except requests.RequestException as exc:
        for unsendable, sentence in _UNSENDABLE.items():
            if isinstance(exc, unsendable):
                return DeliveryOutcome(False, None, f"{where}: {sentence}", retryable=False)
        _, sentence = classify_exception(exc, round(timeout_s * 1000))
        return DeliveryOutcome(False, None, f"{where}: {sentence}", retryable=True)
    if 200 <= status < 300:
        return DeliveryOutcome(True, status, None, retryable=False, retry_after_s=retry_after_s)
    error = f"{where} answered HTTP {status}"
    if 300 <= status < 400:
        error += " (a redirect: configure the URL it points to)"
    hint = _hint(snippet, url)
    if hint:
        error += f": {hint}"
    # 408 and 429 ask us to come back; 5xx is the receiver's own trouble. Any other 4xx is a
    # URL or payload the receiver will refuse again, so retrying would only hide the mistake.
    retryable = status in (408, 429) or status >= 500
    return DeliveryOutcome(False, status, error, retryable, retry_after_s)


def _read_snippet(response: requests.Response) -> bytes:
    try:
        return next(response.iter_content(_SNIPPET_BYTES), b"")
    except requests.RequestException:
        return b""  # the status already tells what happened


def _hint(snippet: bytes, url: str) -> str:
    """The start of a refusal's body, printable, with any echo of the URL's secret parts removed."""
    text = " ".join(snippet.decode("utf-8", "replace").split())
    try:
        parts = urlsplit(url)
        secrets: tuple[str, ...] = (url, parts.path, parts.query)
    except ValueError:
        secrets = (url,)
    for secret in secrets:
        if len(secret) > 1:
            text = text.replace(secret, "…")
    return safe_text(text, 200)


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if unreadable."""
    if value is None:
        return None
    seconds = parse_seconds(value)
    if seconds is None:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # "-0000": HTTP dates are UTC anyway
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds)


def retry_delay_s(
    attempts: int, retry_after_s: float | None = None, *, rng: random.Random | None = None
) -> float:
    """Seconds to wait after `attempts` failed attempts (1 after the first).

    Full jitter between FIRST_RETRY_S and a ceiling that doubles per attempt up to MAX_RETRY_S,
    but never less than the receiver's Retry-After (itself capped at MAX_RETRY_AFTER_S). Pass a
    seeded `rng` for repeatable delays; without one the module's shared generator is used.
    Retrying never stops here: the engine gives up when a notification is too old.
    """
    exponent = min(max(attempts, 1) - 1, 16)  # 2 s * 2**16 is far past the cap already
    ceiling = min(MAX_RETRY_S, FIRST_RETRY_S * 2**exponent)
    uniform = rng.uniform if rng is not None else random.uniform
    delay = uniform(FIRST_RETRY_S, ceiling)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay
