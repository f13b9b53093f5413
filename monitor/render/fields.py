"""What the renderers share: the order fields appear in and how numbers are written."""

from __future__ import annotations

import html
import sys
from datetime import datetime

from monitor.render.text import safe_text

PHASES = ("total", "headers", "ttft", "processing")  # docs/report.md latency_ms keys
QUANTILES = ("p50", "p95", "p99")


def number(value: float | None, digits: int = 0) -> str:
    """A measured value, or "-" where the report says it was never measured."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def percent(fraction: float | None, digits: int = 1) -> str:
    return "-" if fraction is None else f"{fraction * 100:.{digits}f}%"


def moment(text: str) -> datetime:
    """A report timestamp (ISO 8601 with an offset)."""
    return datetime.fromisoformat(text)


def esc(text: object) -> str:
    """Text from anywhere, safe inside HTML and SVG elements and quoted attributes; control
    characters (invalid in SVG, invisible in HTML) are shown as escapes."""
    return html.escape(safe_text(str(text), sys.maxsize), quote=True)
