"""Response headers: capture with redaction, and the numbers parsed out of them.

Redaction happens here, before a ProbeResult exists, so nothing downstream can store or print a
credential. Parsing never invents a value: a header that is missing or unreadable becomes None,
while the raw header text is still kept in the captured dict.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from monitor.domain import RateLimits
from monitor.durations import parse_seconds
from monitor.probe.completion import ID_LIMIT, INT64_MAX, WORD_LIMIT, storable_text
from monitor.probe.scrub import REDACTED, Scrubber

__all__ = ["REDACTED", "capture", "count", "is_sensitive", "openai_fields", "processing_ms",
           "rate_limits", "retry_after_s", "text"]

# Headers that carry credentials or session state. Matched on the whole lower-cased name.
_SENSITIVE_NAMES = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "api-key",
        "x-api-key",
        "openai-api-key",
        "x-goog-api-key",
    }
)
# Vendor variants (x-litellm-api-key, x-azure-secret, ...). "token" is deliberately absent:
# x-ratelimit-*-tokens are counters we must keep.
_SENSITIVE_PART = re.compile(r"(api[-_]?key|secret|password|credential|session[-_]?id)")


def is_sensitive(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SENSITIVE_NAMES or bool(_SENSITIVE_PART.search(lowered))


def capture(items: Iterable[tuple[str, str]], secrets: Iterable[str] = ()) -> dict[str, str]:
    """Lower-cased headers in arrival order, sensitive ones and any echoed secret redacted, and
    no NUL (a server can send one; no database column can hold it)."""
    scrubber = Scrubber(secrets)
    captured: dict[str, str] = {}
    for name, value in items:
        key = scrubber.text(storable_text(name.lower()))
        if is_sensitive(key):
            value = REDACTED
        else:
            value = scrubber.text(storable_text(value))
        # Repeated headers are one value per RFC 9110, comma-joined.
        captured[key] = f"{captured[key]}, {value}" if key in captured else value
    return captured


def _number(headers: Mapping[str, str], name: str) -> float | None:
    text = headers.get(name)
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    # Azure sends -1 as "unknown"; it is kept in the raw headers but is not a quantity. Nor
    # are "inf" and "nan", which float() accepts.
    return value if value >= 0 and math.isfinite(value) else None


def count(headers: Mapping[str, str], name: str) -> int | None:
    value = _number(headers, name)
    return None if value is None or value > INT64_MAX else int(value)


def _duration_s(headers: Mapping[str, str], name: str) -> float | None:
    text = headers.get(name)
    if text is None:
        return None
    seconds = parse_seconds(text)
    return seconds if seconds is not None and 0 <= seconds < math.inf else None


def rate_limits(headers: Mapping[str, str]) -> RateLimits:
    """The six x-ratelimit-* values. Resets may be Go durations ("6m0s") or Azure's seconds."""
    return RateLimits(
        limit_requests=count(headers, "x-ratelimit-limit-requests"),
        limit_tokens=count(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=count(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=count(headers, "x-ratelimit-remaining-tokens"),
        reset_requests_s=_duration_s(headers, "x-ratelimit-reset-requests"),
        reset_tokens_s=_duration_s(headers, "x-ratelimit-reset-tokens"),
    )


def text(headers: Mapping[str, str], name: str, limit: int) -> str | None:
    """A header's text, storable and bounded; None if it was not sent."""
    value = headers.get(name)
    return storable_text(value, limit) if value is not None else None


def openai_fields(headers: Mapping[str, str]) -> dict[str, Any]:
    """The ProbeResult fields OpenAI's (and Azure's, and compatible servers') headers fill."""
    return {
        "openai_processing_ms": processing_ms(headers),
        "openai_version": text(headers, "openai-version", WORD_LIMIT),
        "openai_organization": text(headers, "openai-organization", ID_LIMIT),
        "x_request_id": text(headers, "x-request-id", ID_LIMIT),
        "rate_limits": rate_limits(headers),
    }


def processing_ms(headers: Mapping[str, str]) -> float | None:
    return _number(headers, "openai-processing-ms")


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait: retry-after-ms (OpenAI, Azure) wins; else retry-after, seconds or a date."""
    ms = _number(headers, "retry-after-ms")
    if ms is not None:
        return ms / 1000
    text = headers.get("retry-after")
    if text is None:
        return None
    seconds = _number(headers, "retry-after")
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(text)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None  # unreadable, or a date without a zone (not comparable)
