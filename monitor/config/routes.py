"""`[[routes]]`: what `monitor proxy` forwards where, read with the same checks as the rest.

A route is refused if its upstream could leak or mangle what the app sends: only http(s), no
credentials in it (the app brings its own key on every call), no query or fragment (the app's
own path and query are appended to it). Names are unique and are path segments, because the app
reaches a route at http://proxy/{name}/...
"""

from __future__ import annotations

import re
from typing import Any

from monitor.config.checks import (
    _NO_CREDENTIALS,
    _NOTHING,
    _at,
    _Check,
    _http_url,
    _integer,
    _Invalid,
    _one_of,
    _read_keys,
    _require,
)
from monitor.domain import Provider
from monitor.proxy.exchange import RecordMode, Route

# A name is one path segment the app puts in its base URL: letters, digits, "-", "_", ".".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NAME_EXPECTED = 'a route name like "openai" (letters, digits, ".", "_" or "-"; at most 64)'
_RECORD_EXPECTED = '"all", "headers" or "sample:F" with F in (0, 1], like "sample:0.1"'


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _Invalid(_NAME_EXPECTED, value)
    return value


def _record(value: object) -> str:
    if value in (RecordMode.ALL, RecordMode.HEADERS):
        return str(value)
    if isinstance(value, str) and value.startswith(RecordMode.SAMPLE_PREFIX):
        try:
            rate = float(value.removeprefix(RecordMode.SAMPLE_PREFIX))
        except ValueError:
            rate = 0.0
        if 0 < rate <= 1:
            return value
    raise _Invalid(_RECORD_EXPECTED, value)


def _upstream(value: object) -> str:
    try:
        return _http_url(value)
    except _Invalid as err:
        if err.expected == _NO_CREDENTIALS:  # a target's hint; a route's key comes from the app
            err.expected = "an http(s) URL without credentials in it (the app sends its own key)"
        raise


_ROUTE_KEYS: dict[str, _Check] = {
    "name": _name,
    "provider": _one_of(tuple(p.value for p in Provider)),
    # Refuses userinfo, credential-looking parameters, a query and a fragment.
    "upstream": _upstream,
    "record": _record,
    "max_body_bytes": _integer(1),
}


def check_routes(value: object) -> tuple[Route, ...]:
    """The `routes` section: an array of tables, each a complete route with a unique name."""
    if not isinstance(value, list):
        raise _Invalid("an array of tables ([[routes]])", value)
    routes: list[Route] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(value):
        with _at(f"[{index}]"):
            routes.append(_route(item, first_index, index))
    return tuple(routes)


def _route(item: object, first_index: dict[str, int], index: int) -> Route:
    table: dict[str, Any] = _read_keys(item, _ROUTE_KEYS)
    name = _require(table, "name", _NAME_EXPECTED)
    if name in first_index:
        raise _Invalid(f"a unique name (routes[{first_index[name]}] already uses it)", name,
                       "name")
    first_index[name] = index
    provider = Provider(_require(table, "provider", 'the provider, one of "openai", "azure", '
                                                    '"openai-compatible", "anthropic"'))
    upstream = _require(table, "upstream", 'the upstream URL, like "https://api.openai.com"')
    record = table.get("record", RecordMode.ALL)
    sample_rate = (float(record.removeprefix(RecordMode.SAMPLE_PREFIX))
                   if record.startswith(RecordMode.SAMPLE_PREFIX) else 1.0)
    extra = {"max_body_bytes": table["max_body_bytes"]} if "max_body_bytes" in table else {}
    return Route(name=name, provider=provider, upstream=upstream, record=record,
                 sample_rate=sample_rate, **extra)


def require_routes(routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """At least one route: `monitor proxy` with none would forward nothing."""
    if not routes:
        raise _Invalid("at least one [[routes]] table with name, provider and upstream",
                       _NOTHING, "routes")
    return routes
