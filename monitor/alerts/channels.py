"""Every channel a notification goes to, which alerts each one takes, and one attempt on any.

- `configured(policy)`: channel id -> Channel: the log first (always there, takes every
  alert), then the webhooks, Slack webhooks and Apprise URLs in config order. The id is what
  deliveries store and `/metrics` and `monitor alerts test` show: never the URL.
- `routed(channel, n)`: the notification as the channel takes it, only the alerts of its kinds
  and severities; None if it takes none of them. A test notification goes everywhere.
- `render` makes the body a delivery row stores; `Sender.send` makes one attempt with it and
  returns a DeliveryOutcome (ok, or an error that names the URL only redacted).
- `select` and `send_test` are `monitor alerts test [CHANNEL]`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

import requests

from monitor.alerting import AlertSettings, Channel
from monitor.alerts.apprise_channel import AppriseSender, apprise_message, describe
from monitor.alerts.notifiers import (
    DeliveryOutcome,
    Notification,
    deliver,
    log_line,
    redact_url,
    slack_payload,
    webhook_payload,
)
from monitor.secrets import Secret

log = logging.getLogger("monitor")

# A receiver gets this long to answer one POST.
DELIVERY_TIMEOUT_S: Final = 10.0

LOG: Final = Channel(kind="log", url=Secret(""))

_RENDER: dict[str, Callable[[Notification], dict[str, Any]]] = {
    "log": lambda n: {"line": log_line(n)},
    "webhook": webhook_payload,
    "slack": slack_payload,
    "apprise": apprise_message,
}


def configured(policy: AlertSettings) -> dict[str, Channel]:
    """channel id -> Channel, the log first."""
    found = {"log": LOG}
    for channel in (*policy.webhooks, *policy.slack_webhooks, *policy.apprise):
        found.setdefault(channel.id, channel)  # config refuses a URL given twice
    return found


def routed(channel: Channel, n: Notification) -> Notification | None:
    """`n` with only the alerts `channel` takes, or None if it takes none of them."""
    if n.change == "test":
        return n
    alerts = tuple(a for a in n.alerts if channel.takes(a.kind.value, a.severity.value))
    if not alerts:
        return None
    return n if len(alerts) == len(n.alerts) else replace(n, alerts=alerts)


def destination(channel: Channel) -> str:
    """Where the channel sends, as deliveries store it: redacted."""
    if channel.kind == "log":
        return "log"
    if channel.kind == "apprise":
        return describe(channel.url.value)
    return redact_url(channel.url.value)


def summary(policy: AlertSettings) -> list[dict[str, str]]:
    """Each channel as `monitor config check` shows it: id, destination, routing, origin."""
    rows = []
    for key, channel in configured(policy).items():
        takes = {"info": "every severity", "warning": "warning and critical",
                 "critical": "critical"}[channel.min_severity]
        takes += "; " + (", ".join(channel.kinds) + " only" if channel.kinds else "every kind")
        rows.append({"channel": key, "destination": destination(channel), "takes": takes,
                     "origin": channel.origin})
    return rows


def render(channel: Channel, n: Notification) -> dict[str, Any]:
    """The body to store and send on `channel`."""
    return _RENDER[channel.kind](n)


class Sender:
    """One attempt on any channel; keeps an HTTP session and the Apprise clients between them."""

    def __init__(self) -> None:
        self.session = requests.Session()
        self.apprise = AppriseSender()

    def send(self, channel: Channel, body: dict[str, Any], idempotency_key: str) -> DeliveryOutcome:
        if channel.kind == "log":
            log.warning("%s", body["line"])
            return DeliveryOutcome(True, None, None, retryable=False)
        if channel.kind == "apprise":
            return self.apprise.send(channel.id, channel.url.value, body)
        return deliver(self.session, channel.url.value, body, idempotency_key=idempotency_key,
                       timeout_s=DELIVERY_TIMEOUT_S)

    def close(self) -> None:
        self.session.close()


def select(policy: AlertSettings, name: str | None) -> dict[str, Channel]:
    """The channels `monitor alerts test NAME` means: every one; the one with this id (or
    the only one whose id starts with it); or every one of a kind ("apprise", "webhook",
    "slack", "log"). Empty if none matches."""
    found = configured(policy)
    if name is None:
        return found
    if name in found:
        return {name: found[name]}
    of_kind = {key: channel for key, channel in found.items() if channel.kind == name}
    if of_kind:
        return of_kind
    prefixed = {key: channel for key, channel in found.items() if key.startswith(name)}
    return prefixed if len(prefixed) == 1 else {}


def send_test(channels: dict[str, Channel], now: datetime) -> dict[str, DeliveryOutcome]:
    """Send one test notification (about no alert, so routing does not apply) to each
    channel, once; channel id -> outcome. Nothing is stored."""
    notification = Notification(id=uuid.uuid4().hex, created_at=now, change="test", alerts=())
    sender = Sender()
    try:
        return {key: sender.send(channel, render(channel, notification), notification.id)
                for key, channel in channels.items()}
    finally:
        sender.close()
