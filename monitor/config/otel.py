"""The [otel] section: where `monitor run` exports probes over OTLP/HTTP (monitor/otel/).

    [otel]
    endpoint = "http://127.0.0.1:4318"                 # the collector's OTLP/HTTP base URL
    headers = { authorization = "env:OTEL_TOKEN" }     # values are secrets; env:NAME reads one
    service_name = "monitor"
    timeout = "10s"                                    # one export, retries included
    metrics_interval = "60s"

Header values never appear in an error: a collector's token is as secret as an API key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from monitor.config.checks import (
    _NOTHING,
    _at,
    _Check,
    _duration_between,
    _Invalid,
    _read_keys,
    _table,
    _text,
)
from monitor.domain import OtelSettings
from monitor.errors import raw
from monitor.secrets import Secret

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)


def _endpoint(value: object) -> str:
    """An http(s) base URL without credentials (they go in `headers`, which are kept secret)."""
    expected = 'an http(s) base URL like "http://127.0.0.1:4318"'
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(expected, value)
    if parts.username is not None or parts.password is not None:
        # Never echo it: the part before @ is a credential.
        raise _Invalid("a URL without user:password@ (put credentials in otel.headers)",
                       raw("a URL with credentials"))
    if parts.query or parts.fragment:
        raise _Invalid(expected + " without ?query or #fragment", value)
    if parts.path.rstrip("/").endswith(("/v1/traces", "/v1/metrics")):
        raise _Invalid(expected + " (the base: /v1/traces and /v1/metrics are added to it)",
                       value)
    return str(value).rstrip("/")


def _headers(value: object) -> dict[str, str]:
    """Header names to values as written ("env:NAME" resolved later); values never shown."""
    table = _table(value)
    for name, item in table.items():
        with _at(name):
            if not _TOKEN.fullmatch(name):
                raise _Invalid("an HTTP header name", raw(repr(name)))
            if not isinstance(item, str) or not item or "\r" in item or "\n" in item:
                raise _Invalid('a header value on one line, or "env:VARIABLE"',
                               raw("a string that is not one") if isinstance(item, str) else
                               raw(f"a {type(item).__name__}"))
    return table


OTEL_KEYS: dict[str, _Check] = {
    "endpoint": _endpoint,
    "headers": _headers,
    "service_name": _text,
    # Long enough for a collector across the world, short enough that a dead one does not
    # hold a batch (and the shutdown flush) for long.
    "timeout": _duration_between("100ms", "1m"),
    "metrics_interval": _duration_between("1s", "1d"),
}


def read_otel(value: object) -> dict[str, Any]:
    section = _read_keys(value, OTEL_KEYS)
    if "endpoint" not in section:
        raise _Invalid('an OTLP/HTTP endpoint like "http://127.0.0.1:4318"', _NOTHING,
                       "endpoint")
    return section


def otel_settings(section: dict[str, Any] | None, env: Mapping[str, str]) -> OtelSettings | None:
    """The checked [otel] section with env: header values read from the environment."""
    if section is None:
        return None
    headers = []
    for name, value in section.get("headers", {}).items():
        if value.startswith("env:"):
            variable = value[4:]
            found = env.get(variable)
            if not found:
                raise _Invalid(f"environment variable {variable} to be set to the header's value",
                               _NOTHING, f"otel.headers.{name}")
            if "\r" in found or "\n" in found:
                raise _Invalid("a header value on one line", raw("a value with a line break"),
                               f"otel.headers.{name} ({variable})")
            value = found
        headers.append((name, Secret(value)))
    return OtelSettings(
        endpoint=section["endpoint"], headers=tuple(headers),
        service_name=section.get("service_name", "monitor"),
        timeout_ms=section.get("timeout", 10_000),
        metrics_interval_ms=section.get("metrics_interval"))
