"""Status badges for READMEs and wikis (`/badges/{target}/{kind}.svg`), in the flat style of
shields.io: a grey label and a coloured value, drawn from one target of a 24 h report.

Fingerprints and models come from upstream servers: like every string here they reach the SVG
only through `esc`. The badge holds no script and no style, so it is inert wherever it is
embedded.
"""

from __future__ import annotations

from typing import Any

from monitor.render.fields import esc, number, percent

KINDS = ("uptime-24h", "uptime-7d", "uptime-30d", "latency-p95", "fingerprint", "model")
GOOD, FAIR, BAD, INFO, UNKNOWN = "#2e9e5b", "#dfb317", "#c0392b", "#0072b2", "#9f9f9f"
_LABEL = "#555555"
_HEIGHT = 20
_CHAR_PX = 6.5  # an average character of 11 px Verdana/DejaVu Sans, as shields.io measures
_PAD_PX = 10
_MAX_CHARS = 40  # a long fingerprint or model is cut, not a badge the width of the page


def badge_for(target: dict[str, Any], kind: str) -> str:
    """The `kind` badge (one of KINDS) of a target entry of the report document."""
    if kind.startswith("uptime-"):
        window = kind.removeprefix("uptime-")
        share = (target.get("uptime") or {}).get(window)
        colour = (UNKNOWN if share is None else GOOD if share >= 0.99
                  else FAIR if share >= 0.95 else BAD)
        message = "no data" if share is None else percent(share, 2)
        return render_badge(f"uptime {window}", message, colour, target["target"])
    if kind == "latency-p95":
        p95 = (target["latency_ms"]["total"] or {}).get("p95")
        return render_badge("p95 latency", "no data" if p95 is None else f"{number(p95)} ms",
                            UNKNOWN if p95 is None else INFO, target["target"])
    newest = next((b for b in reversed(target.get("heartbeat") or []) if b["ok"]), None)
    value = None if newest is None else newest.get(kind)
    return render_badge(kind, value or "none", INFO if value else UNKNOWN, target["target"])


def render_badge(label: str, message: str, colour: str, target: str) -> str:
    """A two-part badge; its <title> and aria-label name the target."""
    if len(message) > _MAX_CHARS:
        message = message[:_MAX_CHARS - 1] + "\u2026"
    left = round(len(label) * _CHAR_PX + _PAD_PX)
    right = round(len(message) * _CHAR_PX + _PAD_PX)
    width = left + right
    words = esc(f"{target}: {label} {message}")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{_HEIGHT}" '
            f'role="img" aria-label="{words}"><title>{words}</title>'
            f'<rect width="{left}" height="{_HEIGHT}" fill="{_LABEL}"/>'
            f'<rect x="{left}" width="{right}" height="{_HEIGHT}" fill="{colour}"/>'
            f'<g fill="#ffffff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif"'
            f' font-size="11"><text x="{left / 2:.1f}" y="14">{esc(label)}</text>'
            f'<text x="{left + right / 2:.1f}" y="14">{esc(message)}</text></g></svg>')
