"""Notifications through Apprise (email, PagerDuty, Opsgenie, Teams, Discord, ntfy, ...): the
message, checking a URL, and one attempt at sending it.

- An Apprise URL is a secret: most carry a token or a password, some in the host
  (`tgram://BOT_TOKEN/CHAT`). It is shown only as `describe(url)`, `scheme://host/…` when the
  host looks like a DNS name or an address and `scheme://…` otherwise.
- Apprise reports a failure by returning False and logging why through its `apprise` logger,
  URL and all. While monitor calls Apprise (`_captured`), that logger's records (and urllib3's,
  which name the request's path) are kept from every handler, and their warnings become the
  attempt's error text with every part of the URL removed (`redact`): a failure is recorded
  and retried like a webhook's, never silent.
- Apprise cannot tell a refusal that will last from one that will not, so every failure is
  retried with backoff until the notification is given up (`give_up_after`).
- One `apprise.Apprise` per channel, built on first use: a plugin keeps its connection state
  and throttling between notifications. Sending is synchronous (`async_mode=False`), in the
  dispatcher's thread, under socket timeouts no longer than CONNECT_TIMEOUT_S / READ_TIMEOUT_S.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, unquote

from monitor.alerts.notifiers import DeliveryOutcome, Notification, iso
from monitor.domain import AlertState, Severity
from monitor.render.text import safe_text

if TYPE_CHECKING:
    import apprise

# Upper bounds on Apprise's own socket timeouts (4 s each by default): a URL asking for more
# (`?rto=600`) would hold the dispatcher, and every channel behind it, that long.
CONNECT_TIMEOUT_S: Final = 5.0
READ_TIMEOUT_S: Final = 10.0

_ALERTS: Final = 20  # in one message; the rest are counted (a pager shows a screenful anyway)
_VALUE_CHARS: Final = 300
_EXPLANATION_CHARS: Final = 1000
_ERROR_CHARS: Final = 300


# --- the message ------------------------------------------------------------------------------


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return safe_text(text, _VALUE_CHARS)


def _type(n: Notification) -> str:
    """Apprise's notify type, which services show as a colour or an icon."""
    if n.change == "resolved":
        return "success"
    if n.change == "test":
        return "info"
    return {Severity.CRITICAL: "failure", Severity.WARNING: "warning"}.get(n.severity, "info")


def apprise_message(n: Notification) -> dict[str, str]:
    """Title, plain-text body and notify type. Model output and server text appear only with
    control characters escaped and cut to length: Apprise passes text on to each service."""
    lines = [f"{n.change} at {iso(n.created_at)} · id {n.id}"]
    if n.change == "test":
        lines.append("A test from `monitor alerts test`: this channel works. No alert is open.")
    for a in n.alerts[:_ALERTS]:
        resolved = " · resolved" if a.state == AlertState.RESOLVED else ""
        lines += [
            "",
            (f"{safe_text(a.target, 150)} · {a.kind.value} {safe_text(a.key, 200)} · "
             f"{a.severity.value}{resolved}"),
            f"{_value(a.before)} → {_value(a.after)}",
            safe_text(a.explanation, _EXPLANATION_CHARS),
        ]
    if len(n.alerts) > _ALERTS:
        lines += ["", f"and {len(n.alerts) - _ALERTS} more"]
    return {"title": safe_text(n.title, 250), "body": "\n".join(lines), "type": _type(n)}


# --- keeping the URL out of everything --------------------------------------------------------

_PUBLIC_HOST = re.compile(r"(?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]+|localhost|\[[0-9A-Fa-f:.]+\]")


def describe(url: str) -> str:
    """`scheme://host/…` when the host is a DNS name or an address, else `scheme://…`."""
    scheme, found, rest = url.partition("://")
    if not found or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return "<invalid URL>"
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in netloc:
        netloc = netloc.rpartition("@")[2]
    host, _, port = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
    if _PUBLIC_HOST.fullmatch(host) and (not port or port.isdigit()):
        return f"{scheme.lower()}://{netloc}/…"
    return f"{scheme.lower()}://…"


def _secret_parts(url: str) -> list[str]:
    """Every piece of `url` that may be a secret, longest first, decoded and encoded too."""
    pieces = {url}
    scheme, _, rest = url.partition("://")
    netloc, _, tail = rest.partition("/")
    pieces.add(rest)
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        pieces.update(userinfo.split(":"))
    host = netloc.rpartition(":")[0] if netloc.count(":") == 1 else netloc
    if not _PUBLIC_HOST.fullmatch(host):
        pieces.update((netloc, *netloc.split(":")))
    path, _, query = tail.partition("?")
    query, _, fragment = query.partition("#")
    path, _, path_fragment = path.partition("#")
    pieces.update(path.split("/"))
    pieces.update(part.partition("=")[2] for part in re.split(r"[&;]", query))
    pieces.update((fragment, path_fragment))
    pieces |= {unquote(p) for p in pieces} | {quote(p, safe="") for p in pieces}
    pieces.discard(scheme)
    # Shorter than 3 characters is no secret worth the words it would take out of a message.
    return sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True)


def redact(text: str, url: str) -> str:
    """`text` with the URL and every part of it that may be a secret replaced by "…"."""
    # The URL in any form, Apprise's own "privacy" one included (it keeps a secret's first and
    # last characters: `json://user:p...s@host`).
    scheme = url.partition("://")[0]
    if scheme:
        text = re.sub(rf"(?i)(?<![A-Za-z0-9+.-]){re.escape(scheme)}://[^\s'\"<>]*[^\s'\"<>.,;:)]",
                      "…", text)
    for piece in _secret_parts(url):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(piece)}(?![A-Za-z0-9])", "…", text)
    return text


# While set, records of _LOGGERS go here instead of to any handler.
_CAPTURE: contextvars.ContextVar[list[logging.LogRecord] | None] = contextvars.ContextVar(
    "monitor_apprise_capture", default=None)


def _keep_from_handlers(record: logging.LogRecord) -> bool:
    captured = _CAPTURE.get()
    if captured is None:
        return True  # Apprise used by someone else: not ours to silence
    captured.append(record)
    return False


# Apprise's own logger, and urllib3's, which logs each request's path at DEBUG.
_LOGGERS: Final = ("apprise", "urllib3.connectionpool")


@contextmanager
def _captured() -> Iterator[list[logging.LogRecord]]:
    """The log records of Apprise's calls in this context (a context variable: Apprise's own
    worker threads copy it), withheld from every handler: their text holds the URL."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _keep_from_handlers not in logger.filters:
            logger.addFilter(_keep_from_handlers)
    records: list[logging.LogRecord] = []
    token = _CAPTURE.set(records)
    try:
        yield records
    finally:
        _CAPTURE.reset(token)


def _reason(records: list[logging.LogRecord], url: str) -> str | None:
    """Apprise's warnings and errors as one redacted sentence, or None if it logged none."""
    said = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    if not said:
        return None
    return safe_text(redact(" ".join(dict.fromkeys(said)), url), _ERROR_CHARS)


# --- checking and sending ---------------------------------------------------------------------


def _asset() -> apprise.AppriseAsset:
    import apprise

    return apprise.AppriseAsset(app_id="monitor", app_desc="monitor: drift alerts for LLM APIs",
                                async_mode=False)


def check_url(url: str) -> str | None:
    """None if Apprise can use `url`; otherwise why not, redacted (for a config error)."""
    import apprise

    with _captured() as records:
        plugin = apprise.Apprise.instantiate(url, asset=_asset())
    if plugin is not None:
        return None
    return _reason(records, url) or "Apprise does not recognise it"


class AppriseSender:
    """Sends through one `apprise.Apprise` per channel, built on first use."""

    def __init__(self) -> None:
        self._clients: dict[str, apprise.Apprise] = {}

    def send(self, channel_id: str, url: str, message: dict[str, str]) -> DeliveryOutcome:
        """One attempt; never raises for the service's failure, only records it."""
        where = describe(url)
        with _captured() as records:
            try:
                client = self._client(channel_id, url)
                sent = client is not None and bool(client.notify(
                    body=message["body"], title=message["title"], notify_type=message["type"],
                    body_format="text"))
            # A plugin's bug must not stop the other channels; only its type is kept, since
            # an exception's text may hold the URL.
            except Exception as exc:  # noqa: BLE001
                return DeliveryOutcome(False, None, f"{where}: Apprise raised "
                                       f"{type(exc).__name__}", retryable=True)
        if sent:
            return DeliveryOutcome(True, None, None, retryable=False)
        reason = _reason(records, url) or "Apprise reported a failure without a reason"
        return DeliveryOutcome(False, None, f"{where}: {reason}", retryable=True)

    def _client(self, channel_id: str, url: str) -> apprise.Apprise | None:
        import apprise

        client = self._clients.get(channel_id)
        if client is None:
            asset = _asset()
            plugin = apprise.Apprise.instantiate(url, asset=asset)
            if plugin is None:  # checked at config load; a plugin may still refuse later
                return None
            plugin.socket_connect_timeout = min(plugin.socket_connect_timeout, CONNECT_TIMEOUT_S)
            plugin.socket_read_timeout = min(plugin.socket_read_timeout, READ_TIMEOUT_S)
            client = apprise.Apprise(asset=asset)
            client.add(plugin)
            self._clients[channel_id] = client
        return client
