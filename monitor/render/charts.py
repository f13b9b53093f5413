"""Inline SVG charts drawn from one target of the report document: latency with its p50-p95
band, the fingerprint stripe and quota headroom, each with the alerts marked on it.

Fingerprints and alert texts are untrusted; they reach the SVG only through `esc`, in <title>
tooltips like everywhere else. There are no style attributes: the dashboard's Content Security
Policy admits only its hashed <style> block, and presentation attributes (fill, stroke) are not
styles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from monitor.durations import format_ms
from monitor.render.fields import esc, moment, number, percent

WIDTH = 720
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 10, 22  # plot margins: room for the axis labels
BUCKET = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# Distinguishable for most colour-blind readers (Okabe-Ito, then Tableau); cycles beyond ten.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442",
           "#7f7f7f", "#8c564b", "#17becf")
NO_FINGERPRINT = "#dddddd"
SEVERITY = {"critical": "#c0392b", "warning": "#e67e22", "info": "#2980b9"}

Point = dict[str, Any]


@dataclass(frozen=True)
class Frame:
    """The time range across every chart of a report, so the charts line up."""

    since: datetime
    until: datetime

    def x(self, at: datetime) -> float:
        span = (self.until - self.since).total_seconds() or 1.0
        share = (at - self.since).total_seconds() / span
        return LEFT + min(max(share, 0.0), 1.0) * (WIDTH - LEFT - RIGHT)

    def ticks(self, y: float) -> str:
        """Five time labels along a chart's foot."""
        long = self.until - self.since > timedelta(days=2)
        labels = []
        for i in range(5):
            at = self.since + (self.until - self.since) * i / 4
            anchor = ("start", "middle", "middle", "middle", "end")[i]
            text = at.strftime("%Y-%m-%d" if long else "%m-%d %H:%M")
            labels.append(f'<text x="{self.x(at):.1f}" y="{y:.0f}" '
                          f'text-anchor="{anchor}">{text}</text>')
        return "".join(labels)


def fingerprint_colours(target: dict[str, Any]) -> dict[str, str]:
    """A colour per fingerprint, the most frequent first, then any only the series shows."""
    names = [f["fingerprint"] for f in target["fingerprints"]]
    names += [p["fingerprint"] for p in target["series"]["points"] if p["fingerprint"]]
    colours: dict[str, str] = {}
    for name in names:
        colours.setdefault(name, PALETTE[len(colours) % len(PALETTE)])
    return colours


def latency_chart(target: dict[str, Any], frame: Frame) -> str:
    """Total latency per bucket: the p50 line over the p50-p95 band, failed probes in red."""
    height = 170
    bottom = height - BOTTOM
    points = _points(target, frame)
    peak = max([p["p95_ms"] or p["p50_ms"] or 0.0 for _, p in points] or [0.0])
    top_ms = _nice(peak) if peak > 0 else 1000.0

    def y(value: float) -> float:
        return bottom - value / top_ms * (bottom - TOP)

    parts = [_grid([(y(v), format_ms(v)) for v in (0.0, top_ms / 2, top_ms)])]
    for run in _runs(points, "p50_ms", "p95_ms"):
        upper = [(x, y(p["p95_ms"])) for x, p in run]
        lower = [(x, y(p["p50_ms"])) for x, p in reversed(run)]
        parts.append(f'<path class="band" d="{_path(upper + lower)} Z" fill="#0072b2" '
                     f'fill-opacity="0.2" stroke="none"/>')
    for run in _runs(points, "p50_ms"):
        parts.append(f'<path class="p50" d="{_path([(x, y(p["p50_ms"])) for x, p in run])}" '
                     f'fill="none" stroke="#0072b2" stroke-width="1.5"/>')
    for x, p in points:
        if p["p50_ms"] is not None:
            tip = (f"{p['t']}: p50 {number(p['p50_ms'])} ms, p95 {number(p['p95_ms'])} ms, "
                   f"{p['probes']} probes")
            parts.append(f'<circle cx="{x:.1f}" cy="{y(p["p50_ms"]):.1f}" r="2" '
                         f'fill="#0072b2"><title>{esc(tip)}</title></circle>')
    parts += _errors(target, frame, bottom)
    return _svg("latency", height, frame, target, parts, has_data=bool(points))


def headroom_chart(target: dict[str, Any], frame: Frame) -> str:
    """The lowest share of the request and token quota left in each bucket."""
    height = 120
    bottom = height - BOTTOM

    def y(value: float) -> float:
        return bottom - value * (bottom - TOP)

    parts = [_grid([(y(v), percent(v, 0)) for v in (0.0, 0.5, 1.0)])]
    points = _points(target, frame)
    has_data = False
    for key, colour, label, row in (("headroom_requests", "#009e73", "requests", 0),
                                    ("headroom_tokens", "#cc79a7", "tokens", 1)):
        for run in _runs(points, key):
            has_data = True
            parts.append(f'<path class="{key}" d="{_path([(x, y(p[key])) for x, p in run])}" '
                         f'fill="none" stroke="{colour}" stroke-width="1.5"/>')
        legend_x = WIDTH - RIGHT - 150 + 75 * row
        parts.append(f'<rect x="{legend_x}" y="{TOP + 2}" width="10" height="3" '
                     f'fill="{colour}"/><text x="{legend_x + 14}" y="{TOP + 7}">{label}</text>')
    return _svg("headroom", height, frame, target, parts, has_data=has_data)


def fingerprint_stripe(target: dict[str, Any], frame: Frame, colours: dict[str, str]) -> str:
    """One band per bucket in the colour of its most frequent fingerprint."""
    height = 44
    bottom = height - BOTTOM
    width = BUCKET.get(target["series"]["bucket"], BUCKET["hour"])
    parts = []
    for p in target["series"]["points"]:
        start = moment(p["t"])
        x0, x1 = frame.x(start), frame.x(start + width)
        if x1 <= x0:
            continue
        name = p["fingerprint"]
        fill = colours.get(name, NO_FINGERPRINT) if name else NO_FINGERPRINT
        tip = f"{p['t']}: {name if name else 'no fingerprint'} ({p['probes']} probes)"
        parts.append(f'<rect class="fingerprint" x="{x0:.1f}" y="{TOP}" '
                     f'width="{x1 - x0:.1f}" height="{bottom - TOP}" fill="{fill}">'
                     f'<title>{esc(tip)}</title></rect>')
    return _svg("fingerprints", height, frame, target, parts, has_data=bool(parts))


def _points(target: dict[str, Any], frame: Frame) -> list[tuple[float, Point]]:
    """The series points with their x, at the middle of their bucket."""
    half = BUCKET.get(target["series"]["bucket"], BUCKET["hour"]) / 2
    return [(frame.x(moment(p["t"]) + half), p) for p in target["series"]["points"]]


def _runs(points: list[tuple[float, Point]], *keys: str) -> Iterable[list[tuple[float, Point]]]:
    """Stretches of consecutive points that have every value: a bucket without breaks a line."""
    run: list[tuple[float, Point]] = []
    for x, p in points:
        if all(p[key] is not None for key in keys):
            run.append((x, p))
        elif run:
            yield run
            run = []
    if run:
        yield run


def _path(coords: list[tuple[float, float]]) -> str:
    if len(coords) == 1:  # a lone bucket still shows, as a short tick
        x, y = coords[0]
        coords = [(x - 2, y), (x + 2, y)]
    return "M" + " L".join(f"{x:.1f} {y:.1f}" for x, y in coords)


def _nice(value: float) -> float:
    """The next round number above `value` (1, 2, 2.5 or 5 times a power of ten)."""
    scale = 10.0 ** (len(str(int(value))) - 1)
    return next(m * scale for m in (1, 2, 2.5, 5, 10) if m * scale >= value)


def _grid(ticks: list[tuple[float, str]]) -> str:
    return "".join(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                   f'y2="{y:.1f}" stroke="#e5e5e5"/><text x="{LEFT - 4}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{label}</text>' for y, label in ticks)


def _errors(target: dict[str, Any], frame: Frame, bottom: float) -> list[str]:
    width = BUCKET.get(target["series"]["bucket"], BUCKET["hour"])
    marks = []
    for p in target["series"]["points"]:
        if p["errors"]:
            start = moment(p["t"])
            x0, x1 = frame.x(start), frame.x(start + width)
            tip = f"{p['t']}: {p['errors']} of {p['probes']} probes failed"
            marks.append(f'<rect class="errors" x="{x0:.1f}" y="{bottom - 4}" '
                         f'width="{max(x1 - x0, 1):.1f}" height="4" fill="#c0392b">'
                         f'<title>{esc(tip)}</title></rect>')
    return marks


def _alerts(alerts: list[dict[str, Any]], frame: Frame, bottom: float) -> list[str]:
    """A shaded span while each alert was open, a line where it opened, a dashed one where it
    resolved; hovering any of them shows the alert's explanation."""
    marks = []
    for a in alerts:
        opened = moment(a["opened_at"])
        resolved = moment(a["resolved_at"]) if a.get("resolved_at") else None
        if opened > frame.until or (resolved is not None and resolved < frame.since):
            continue
        colour = SEVERITY.get(a["severity"], "#7f7f7f")
        x0, x1 = frame.x(opened), frame.x(resolved or frame.until)
        tip = f"#{a['id']} {a['severity']} {a['kind']} {a['key']}: opened {a['opened_at']}"
        tip += f", resolved {a['resolved_at']}" if resolved else ", still open"
        parts = [f'<g class="alert"><title>{esc(tip + ". " + a["explanation"])}</title>',
                 (f'<rect x="{x0:.1f}" y="{TOP}" width="{max(x1 - x0, 1):.1f}" '
                 f'height="{bottom - TOP}" fill="{colour}" fill-opacity="0.08"/>')]
        if opened >= frame.since:
            parts.append(f'<line class="opened" x1="{x0:.1f}" x2="{x0:.1f}" y1="{TOP}" '
                         f'y2="{bottom}" stroke="{colour}" stroke-width="1.5"/>'
                         f'<path d="M{x0 - 4:.1f} {TOP} L{x0 + 4:.1f} {TOP} L{x0:.1f} '
                         f'{TOP + 6}Z" fill="{colour}"/>')
        if resolved is not None and resolved <= frame.until:
            parts.append(f'<line class="resolved" x1="{x1:.1f}" x2="{x1:.1f}" y1="{TOP}" '
                         f'y2="{bottom}" stroke="{colour}" stroke-dasharray="4 3"/>')
        marks.append("".join(parts) + "</g>")
    return marks


def _svg(kind: str, height: int, frame: Frame, target: dict[str, Any], parts: list[str],
         *, has_data: bool) -> str:
    bottom = height - BOTTOM
    body = "".join(parts)
    if not has_data:
        body += (f'<text class="empty" x="{WIDTH / 2:.0f}" y="{(TOP + bottom) / 2 + 4:.0f}" '
                 f'text-anchor="middle">no data in this range</text>')
    body += "".join(_alerts(target["alerts"], frame, bottom))
    axis = (f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{bottom}" y2="{bottom}" '
            f'stroke="#999999"/>')
    return (f'<svg class="chart {kind}" viewBox="0 0 {WIDTH} {height}" '
            f'xmlns="http://www.w3.org/2000/svg" role="img" '
            f'aria-label="{esc(kind + " of " + str(target["target"]))}">'
            f"{body}{axis}{frame.ticks(height - 6)}</svg>")
