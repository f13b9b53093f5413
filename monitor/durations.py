"""Durations as people and servers write them: "250ms", "30s", "6m0s", "1h2m3.5s", "23h18m29.144s".

One grammar serves the config file and the x-ratelimit-reset-* headers (which use Go's
time.Duration format). A bare number is seconds, the unit Azure and retry-after use.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:(?:\d+(?:\.\d+)?|\.\d+)(?:ms|s|m|h|d))+")
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)")


def parse_seconds(text: str) -> float | None:
    """Seconds in `text`, or None when it is not a duration. Negative bare numbers pass through."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    if not _WHOLE.fullmatch(text):
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in _PART.findall(text))


def parse_ms(text: str) -> int | None:
    """Milliseconds in a config duration such as "250ms" or "5m"; None when malformed.

    Unlike parse_seconds a unit is required: in a config file "30" is ambiguous.
    """
    text = text.strip()
    if not _WHOLE.fullmatch(text):
        return None
    ms = sum(float(n) * _UNIT_S[u] for n, u in _PART.findall(text)) * 1000
    return round(ms) if math.isfinite(ms) else None  # "1e400" digits long is no duration


def format_ms(ms: float) -> str:
    """A short human form: 250ms, 30s, 5m, 1h30m."""
    if ms < 1000:
        return f"{ms:g}ms"
    seconds = ms / 1000
    if seconds < 60 or seconds % 60:
        return f"{seconds:g}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:g}s"
    minutes = int(seconds // 60)
    if minutes < 60 or minutes % 60:
        return f"{minutes}m" if minutes < 60 else f"{minutes // 60}h{minutes % 60}m"
    return f"{minutes // 60}h"


class OutOfRange(ValueError):
    """A point in time that parses but that no datetime can hold; its message says which."""


def parse_since(text: str, now: datetime) -> datetime | None:
    """A point in time as the CLI takes it: a duration back from `now` ("24h", "7d"), a date
    ("2026-11-01", midnight UTC) or an ISO 8601 time (UTC unless it has an offset); None when
    it is none of these. OutOfRange when it is one, but outside the calendar in UTC ("9999999d"
    back from now, "9999-12-31T23:59:59-23:59")."""
    try:
        return _parse_since(text, now)
    except OverflowError:
        raise OutOfRange(f"{text[:40]!r} is outside the calendar (years 1 to 9999 in UTC)"
                         ) from None


def _parse_since(text: str, now: datetime) -> datetime | None:
    ms = parse_ms(text)
    if ms is not None:
        return now - timedelta(milliseconds=ms)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
