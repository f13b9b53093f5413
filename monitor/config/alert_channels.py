"""`[alerts] webhooks`, `slack_webhooks` and `apprise`: where notifications go, and which.

Each is an array whose items are a URL, "env:NAME" (the URL is read from that variable, for
a URL is a secret), or a table that adds routing:

    apprise = ["env:APPRISE_URLS", { url = "json://host/path", min_severity = "critical",
                                     kinds = ["model", "fingerprint"] }]

A variable named by an `apprise` item may hold several URLs, separated by spaces, new lines or
commas, as Apprise reads them. Every Apprise URL is checked with Apprise when the config is
loaded. No message shows a URL: a wrong one is described ("a string that is not one") or
Apprise's reason is given with every part of the URL taken out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from monitor.alerting import SEVERITIES, Channel
from monitor.config.checks import _NOTHING, _array_of, _at, _choices, _Invalid, _read_keys
from monitor.domain import DriftKind
from monitor.errors import raw
from monitor.secrets import Secret

_KINDS = tuple(kind.value for kind in DriftKind)
_APPRISE_EXPECTED = ('an Apprise URL like "mailto://user:password@example.com" or '
                     '"json://host/path", or "env:VARIABLE"')


@dataclass(frozen=True)
class _Entry:
    """One array item as written: a URL or "env:NAME", and its routing."""

    url: str
    min_severity: str = "info"
    kinds: tuple[str, ...] = ()
    table: bool = False  # written as a table: the URL's key path ends in ".url"


def _webhook_url(value: object) -> str:
    """An http(s) URL, or "env:NAME" to read it from the environment (they carry tokens)."""
    if isinstance(value, str) and value.startswith("env:"):
        return value
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        # The URL may hold a token: show only its shape.
        got = raw("a string that is not one") if isinstance(value, str) else value
        raise _Invalid('an http(s) URL or "env:VARIABLE"', got)
    return value  # type: ignore[return-value]  # checked by urlsplit above


def _apprise_url(value: object) -> str:
    """A string that may be an Apprise URL (Apprise itself judges it once env: is resolved)."""
    if isinstance(value, str) and (value.startswith("env:") or "://" in value):
        return value
    got = raw("a string that is not one") if isinstance(value, str) else value
    raise _Invalid(_APPRISE_EXPECTED, got)


def _severity(value: object) -> str:
    if not isinstance(value, str) or value not in SEVERITIES:
        raise _Invalid(_choices(SEVERITIES), value)
    return value


def _kind(value: object) -> str:
    if not isinstance(value, str) or value not in _KINDS:
        raise _Invalid(_choices(_KINDS), value)
    return value


_kinds = _array_of(_kind, 'an array of drift kinds like ["model", "fingerprint"]')


def _entries(url_check: Any, example: str) -> Any:
    """The check of one channel array: each item a URL string or a routing table."""
    table_keys = {"url": url_check, "min_severity": _severity, "kinds": _kinds}

    def item(value: object) -> _Entry:
        if not isinstance(value, dict):
            return _Entry(url_check(value))
        table = _read_keys(value, table_keys)
        if "url" not in table:
            raise _Invalid('a URL or "env:VARIABLE" (the table\'s `url`)', _NOTHING, "url")
        return _Entry(table["url"], table.get("min_severity", "info"),
                      table.get("kinds", ()), table=True)

    return _array_of(item, f"an array of URLs like {example}")


CHANNEL_KEYS = {
    "webhooks": _entries(_webhook_url, '["https://hooks.example.com/monitor"]'),
    "slack_webhooks": _entries(_webhook_url, '["env:SLACK_WEBHOOK_URL"]'),
    "apprise": _entries(_apprise_url, '["env:APPRISE_URLS", "mailto://user:password@host"]'),
}
_KIND_OF = {"webhooks": "webhook", "slack_webhooks": "slack", "apprise": "apprise"}
# Apprise's own separators between URLs in one string: white space, and a comma before the
# next scheme (a comma inside a URL, as in `?to=a@x.org,b@x.org`, is the URL's own).
_BETWEEN_URLS = re.compile(r"\s+|,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def _split_urls(text: str) -> list[str]:
    return [url.strip(",") for url in _BETWEEN_URLS.split(text) if url.strip(",")]


def _resolve(key: str, index: int, entry: _Entry, env: Mapping[str, str]) -> list[Channel]:
    where = f"alerts.{key}[{index}]" + (".url" if entry.table else "")
    kind = _KIND_OF[key]
    urls: list[tuple[str, str]] = []  # (URL, its key path)
    if not entry.url.startswith("env:"):
        urls.append((entry.url, where))
    else:
        name = entry.url[4:]
        value = env.get(name, "").strip()
        if not value:
            wanted = "one or more Apprise URLs" if kind == "apprise" else "a webhook URL"
            raise _Invalid(f"environment variable {name} to be set to {wanted}", _NOTHING, where)
        found = _split_urls(value) if kind == "apprise" else [value]
        for number, url in enumerate(found, 1):
            label = f"{where} ({name}, URL {number})" if len(found) > 1 else f"{where} ({name})"
            if kind != "apprise":
                with _at(label):
                    url = _webhook_url(url)
            urls.append((url, label))
    if kind == "apprise":
        from monitor.alerts.apprise_channel import check_url

        for url, label in urls:
            with _at(label):
                url = _apprise_url(url)
            reason = check_url(url)
            if reason is not None:
                raise _Invalid(_APPRISE_EXPECTED, raw(f"one Apprise cannot use ({reason})"), label)
    return [Channel(kind, Secret(url), entry.min_severity, entry.kinds,
                    origin=label.replace(".url", "", 1) if entry.table else label)
            for url, label in urls]


def resolve_channels(section: dict[str, Any],
                     env: Mapping[str, str]) -> dict[str, tuple[Channel, ...]]:
    """`webhooks`, `slack_webhooks` and `apprise` as Channels, variables read."""
    resolved: dict[str, tuple[Channel, ...]] = {}
    seen: dict[str, str] = {}  # channel id -> where it was configured
    for key in CHANNEL_KEYS:
        channels = []
        for index, entry in enumerate(section.get(key, ())):
            for channel in _resolve(key, index, entry, env):
                if channel.id in seen:
                    raise _Invalid(f"a URL not configured twice (it is also {seen[channel.id]})",
                                   raw("the same URL again"), channel.origin)
                seen[channel.id] = channel.origin
                channels.append(channel)
        resolved[key] = tuple(channels)
    return resolved
