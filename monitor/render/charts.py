"""Inline SVG charts drawn from one target of the report document: latency, the fingerprint
stripe and quota headroom, each with the alerts marked on it.

A series of probes (ranges up to 48 h) draws every probe: a marker per probe on the latency
chart (failed ones as red ticks), a stripe cell per probe, a vertex per probe on the headroom
lines; each marker's tooltip gives its time, latency, outcome and fingerprint and, on the
dashboard, links to the probe's page. Hourly and daily series draw a bucket per point: the p50
line over the p50-p95 band.

Fingerprints, models, error text and alert texts are untrusted; they reach the SVG only through
`esc`, in <title> tooltips. There are no style attributes: the dashboard's Content Security
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
from monitor.render.text import human_time

WIDTH = 720
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 10, 22  # plot margins: room for the axis labels
BUCKET = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# Distinguishable for most colour-blind readers (Okabe-Ito, then Tableau); cycles beyond ten.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442",
           "#7f7f7f", "#8c564b", "#17becf")
NO_FINGERPRINT = "#dddddd"
FAILED = "#c0392b"
SEVERITY = {"critical": "#c0392b", "warning": "#e67e22", "info": "#2980b9"}
# Beyond this many probes in one chart, markers carry no tooltip or link: a page of 48 h at
# two-second intervals stays a few megabytes, and the points are far narrower than a pixel.
TOOLTIPS_UP_TO = 3000

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
        span = self.until - self.since
        shape = ("%Y-%m-%d" if span > timedelta(days=2) else
                 "%m-%d %H:%M" if span > timedelta(hours=2) else "%H:%M:%S")
        labels = []
        for i in range(5):
            at = self.since + span * i / 4
            anchor = ("start", "middle", "middle", "middle", "end")[i]
            labels.append(f'<text x="{self.x(at):.1f}" y="{y:.0f}" '
                          f'text-anchor="{anchor}">{at.strftime(shape)}</text>')
        return "".join(labels)


def frame_of(doc: dict[str, Any]) -> Frame:
    """The report's range, starting where its data starts when that is later (a new install,
    a target added today): history is drawn across the width, not in its last pixel."""
    since, until = moment(doc["since"]), moment(doc["until"])
    firsts = [moment(t["series"]["columns"]["t"][0]) for t in doc["targets"]
              if t["series"]["columns"]["t"]]
    if firsts:
        since = min(max(since, min(firsts)), until)
    return Frame(since, until)


def rows(series: dict[str, Any]) -> list[Point]:
    """A series' points one dict each (the report carries them as columns: docs/report.md)."""
    columns = series["columns"]
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values())]


def probe_tip(p: Point) -> str:
    """One probe in words: time, latency, outcome, fingerprint (upstream text: escape it)."""
    outcome = "ok" if p["ok"] else (f"failed: {p['error_kind'] or 'unknown'}"
                                   + (f" (HTTP {p['http_status']})" if p["http_status"] else ""))
    latency = "-" if p["total_ms"] is None else f"{number(p['total_ms'])} ms"
    return (f"{human_time(p['t'])}: {latency}, {outcome}, fingerprint "
            f"{p['fingerprint'] or '-'} (probe {p['probe_id']})")


def link(probe_id: object, inner: str, links: bool) -> str:
    """`inner` as a link to the probe's page on the dashboard (a report file has none)."""
    return f'<a href="probes/{esc(probe_id)}">{inner}</a>' if links else inner


def fingerprint_colours(target: dict[str, Any]) -> dict[str, str]:
    """A colour per fingerprint, the most frequent first, then any only the series shows."""
    names = [f["fingerprint"] for f in target["fingerprints"]]
    names += [name for name in target["series"]["columns"]["fingerprint"] if name]
    colours: dict[str, str] = {}
    for name in names:
        colours.setdefault(name, PALETTE[len(colours) % len(PALETTE)])
    return colours


def _by_probe(target: dict[str, Any]) -> bool:
    return bool(target["series"]["bucket"] == "probe")


def latency_chart(target: dict[str, Any], series: list[Point], frame: Frame, *,
                  links: bool = False) -> str:
    """Total latency: every probe (failed ones as red ticks), or per bucket the p50 line over
    the p50-p95 band. `series` is rows(target["series"])."""
    height = 170
    bottom = height - BOTTOM
    points = _points(target, series, frame)
    by_probe = _by_probe(target)
    keys = ("total_ms",) if by_probe else ("p50_ms", "p95_ms")
    peak = max([p[k] for _, p in points for k in keys
                if p[k] is not None and (not by_probe or p["ok"])] or [0.0])
    top_ms = _nice(peak) if peak > 0 else 1000.0

    def y(value: float) -> float:
        return bottom - value / top_ms * (bottom - TOP)

    grid = _grid([(y(v), format_ms(v)) for v in (0.0, top_ms / 2, top_ms)])
    parts = []
    if by_probe:
        succeeded = [(x, p if p["ok"] else dict(p, total_ms=None)) for x, p in points]
        for run in _runs(succeeded, "total_ms"):
            parts.append(f'<path class="line" d="{_path([(x, y(p["total_ms"])) for x, p in run])}"'
                         f' fill="none" stroke="#0072b2" stroke-width="1"/>')
        tips = len(points) <= TOOLTIPS_UP_TO
        for x, p in points:
            tip = f"<title>{esc(probe_tip(p))}</title>" if tips else ""
            if p["ok"] and p["total_ms"] is not None:
                mark = (f'<circle class="probe ok" cx="{x:.1f}" cy="{y(p["total_ms"]):.1f}" '
                        f'r="2" fill="#0072b2">{tip}</circle>')
            else:
                mark = (f'<rect class="probe failed" x="{x - 1:.1f}" y="{bottom - 8}" '
                        f'width="2" height="8" fill="{FAILED}">{tip}</rect>')
            parts.append(link(p["probe_id"], mark, links and tips))
    else:
        for run in _runs(points, "p50_ms", "p95_ms"):
            upper = [(x, y(p["p95_ms"])) for x, p in run]
            lower = [(x, y(p["p50_ms"])) for x, p in reversed(run)]
            parts.append(f'<path class="band" d="{_path(upper + lower)} Z" fill="#0072b2" '
                         f'fill-opacity="0.2" stroke="none"/>')
        for run in _runs(points, "p50_ms"):
            parts.append(f'<path class="p50" d="{_path([(x, y(p["p50_ms"])) for x, p in run])}"'
                         f' fill="none" stroke="#0072b2" stroke-width="1.5"/>')
        for x, p in points:
            if p["p50_ms"] is not None:
                tip = (f"{p['t']}: p50 {number(p['p50_ms'])} ms, p95 {number(p['p95_ms'])} ms, "
                       f"{p['probes']} probes")
                parts.append(f'<circle cx="{x:.1f}" cy="{y(p["p50_ms"]):.1f}" r="2" '
                             f'fill="#0072b2"><title>{esc(tip)}</title></circle>')
        parts += _errors(target, series, frame, bottom)
    return _svg("latency", height, frame, target, grid, parts, has_data=bool(points))


def headroom_chart(target: dict[str, Any], series: list[Point], frame: Frame) -> str:
    """The share of the request and token quota left: per probe, or the lowest per bucket."""
    height = 120
    bottom = height - BOTTOM

    def y(value: float) -> float:
        # Inset from the frame, so a quota that stays full or empty is a line of its own and
        # not one with the axis or the top grid line.
        return bottom - 3 - value * (bottom - TOP - 6)

    grid = _grid([(y(v), percent(v, 0)) for v in (0.0, 0.5, 1.0)])
    points = _points(target, series, frame)
    parts = []
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
    return _svg("headroom", height, frame, target, grid, parts, has_data=has_data)


def fingerprint_stripe(target: dict[str, Any], series: list[Point], frame: Frame,
                       colours: dict[str, str]) -> str:
    """A cell per probe (grouped in runs of one fingerprint) or a band per bucket, in the
    colour of its fingerprint (of a bucket: its most frequent one)."""
    height = 44
    bottom = height - BOTTOM
    parts = []
    for name, cells, tip in _stripe_cells(target, series, frame):
        fill = colours.get(name, NO_FINGERPRINT) if name else NO_FINGERPRINT
        rects = "".join(f'<rect class="{kind}" x="{x0:.1f}" y="{TOP}" '
                        f'width="{max(x1 - x0, 0.5):.1f}" height="{bottom - TOP}"/>'
                        for x0, x1, kind in cells)
        parts.append(f'<g class="fingerprint" fill="{fill}"><title>{esc(tip)}</title>'
                     f"{rects}</g>")
    return _svg("fingerprints", height, frame, target, "", parts, has_data=bool(parts))


def _stripe_cells(target: dict[str, Any], points: list[Point], frame: Frame
                  ) -> Iterable[tuple[str | None, list[tuple[float, float, str]], str]]:
    """(fingerprint, cells (x0, x1, class), tooltip) per run of probes or per bucket."""
    if not _by_probe(target):
        width = BUCKET.get(target["series"]["bucket"], BUCKET["hour"])
        for p in points:
            start = moment(p["t"])
            x0, x1 = frame.x(start), frame.x(start + width)
            if x1 > x0:
                name = p["fingerprint"]
                tip = f"{p['t']}: {name if name else 'no fingerprint'} ({p['probes']} probes)"
                yield name, [(x0, x1, "bucket")], tip
        return
    times = [moment(p["t"]) for p in points]
    # A probe's cell reaches the next probe; the last one's as far as the gap before it.
    last_gap = times[-1] - times[-2] if len(times) > 1 else timedelta(0)
    ends = times[1:] + [min(times[-1] + last_gap, frame.until)] if times else []
    run: list[int] = []
    for i, p in enumerate(points):
        if run and points[run[0]]["fingerprint"] != p["fingerprint"]:
            yield _run(points, run, times, ends, frame)
            run = []
        run.append(i)
    if run:
        yield _run(points, run, times, ends, frame)


def _run(points: list[Point], run: list[int], times: list[datetime], ends: list[datetime],
         frame: Frame) -> tuple[str | None, list[tuple[float, float, str]], str]:
    name = points[run[0]]["fingerprint"]
    first, last = points[run[0]], points[run[-1]]
    tip = (f"{name or 'no fingerprint'}: {len(run)} probe{'s' * (len(run) != 1)}, "
           f"{human_time(first['t'])} to {human_time(last['t'])}")
    return name, [(frame.x(times[i]), frame.x(ends[i]), "probe") for i in run], tip


def _points(target: dict[str, Any], series: list[Point],
            frame: Frame) -> list[tuple[float, Point]]:
    """The series points with their x: a probe's own time, or the middle of its bucket."""
    if _by_probe(target):
        return [(frame.x(moment(p["t"])), p) for p in series]
    half = BUCKET.get(target["series"]["bucket"], BUCKET["hour"]) / 2
    return [(frame.x(moment(p["t"]) + half), p) for p in series]


def _runs(points: list[tuple[float, Point]], *keys: str) -> Iterable[list[tuple[float, Point]]]:
    """Stretches of consecutive points that have every value: a gap breaks a line."""
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
    if len(coords) == 1:  # a lone point still shows, as a short tick
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


def _errors(target: dict[str, Any], series: list[Point], frame: Frame,
            bottom: float) -> list[str]:
    width = BUCKET.get(target["series"]["bucket"], BUCKET["hour"])
    marks = []
    for p in series:
        if p["errors"]:
            start = moment(p["t"])
            x0, x1 = frame.x(start), frame.x(start + width)
            tip = f"{p['t']}: {p['errors']} of {p['probes']} probes failed"
            marks.append(f'<rect class="errors" x="{x0:.1f}" y="{bottom - 4}" '
                         f'width="{max(x1 - x0, 1):.1f}" height="4" fill="{FAILED}">'
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


def _svg(kind: str, height: int, frame: Frame, target: dict[str, Any], grid: str,
         parts: list[str], *, has_data: bool) -> str:
    """Grid, alert spans and the axis first, the data over them: nothing hides a line, and
    a point inside an alert's span still shows its own tooltip."""
    bottom = height - BOTTOM
    axis = (f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{bottom}" y2="{bottom}" '
            f'stroke="#999999"/>')
    body = grid + "".join(_alerts(target["alerts"], frame, bottom)) + axis + "".join(parts)
    if not has_data:
        body += (f'<text class="empty" x="{WIDTH / 2:.0f}" y="{(TOP + bottom) / 2 + 4:.0f}" '
                 f'text-anchor="middle">no data in this range</text>')
    return (f'<svg class="chart {kind}" viewBox="0 0 {WIDTH} {height}" '
            f'xmlns="http://www.w3.org/2000/svg" role="img" '
            f'aria-label="{esc(kind + " of " + str(target["target"]))}">'
            f"{body}{frame.ticks(height - 6)}</svg>")
