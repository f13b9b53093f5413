"""The dashboard's status overview: a row per target with a heartbeat bar of its latest probes
(each cell links to the probe's page), uptime over 24 h / 7 d / 30 d, p95 latency, the current
model and fingerprint, and a state line that explains any silence (a baseline still learning,
a back-off, a spent budget, maintenance, skipped slots).

One table row per target keeps fifty targets on a screen or two. Every upstream string goes
through `esc`; the bar is inline SVG with <title> tooltips, so it needs no script.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monitor.render.charts import link, probe_tip
from monitor.render.fields import esc, number, percent

HEARTBEAT_CELLS = 60  # docs/report.md: the heartbeat holds at most 60 probes
CELL, GAP, BAR_HEIGHT = 5, 1, 18
OK, LIMITED, FAILED, EMPTY = "#2e9e5b", "#e69f00", "#c0392b", "#e5e5e5"
UPTIME = ("24h", "7d", "30d")


def render_overview(doc: dict[str, Any], target_href: Callable[[str], str]) -> str:
    """The overview table; `target_href(name)` is where a target's name leads."""
    if not doc["targets"]:
        return ""
    rows = "".join(_row(t, target_href(t["target"])) for t in doc["targets"])
    head = ("<tr><th>target</th><th>latest probes</th>"
            + "".join(f'<th class="n">{label}</th>' for label in UPTIME)
            + '<th class="n">p95 ms</th><th>model / fingerprint</th><th>state</th></tr>')
    return (f'<section class="overview"><h2>status</h2><div class="wide"><table>{head}{rows}'
            "</table></div></section>")


def _row(t: dict[str, Any], href: str) -> str:
    uptime = t.get("uptime") or {}
    total = t["latency_ms"]["total"] or {}
    alerts = len(t["open_alerts"])
    name = (f'<a href="{esc(href)}">{esc(t["target"])}</a>'
            + (f' <span class="bad">{alerts} open</span>' if alerts else ""))
    return (f'<tr class="status"><td>{name}</td><td>{heartbeat_bar(t)}</td>'
            + "".join(f'<td class="n{_low(uptime.get(label))}">{percent(uptime.get(label), 2)}'
                      "</td>" for label in UPTIME)
            + f'<td class="n">{number(total.get("p95"))}</td><td>{_current(t)}</td>'
            f'<td class="state">{state_line(t)}</td></tr>')


def _low(fraction: float | None) -> str:
    return " bad" if fraction is not None and fraction < 0.99 else ""


def heartbeat_bar(t: dict[str, Any]) -> str:
    """A cell per recent probe, newest on the right, coloured by outcome; empty cells fill the
    left until there are enough probes."""
    beats = (t.get("heartbeat") or [])[-HEARTBEAT_CELLS:]
    width = HEARTBEAT_CELLS * (CELL + GAP)
    cells = []
    for i in range(HEARTBEAT_CELLS - len(beats)):
        cells.append(f'<rect class="empty" x="{i * (CELL + GAP)}" y="0" width="{CELL}" '
                     f'height="{BAR_HEIGHT}" rx="1" fill="{EMPTY}"/>')
    for i, beat in enumerate(beats, start=HEARTBEAT_CELLS - len(beats)):
        outcome = ("ok" if beat["ok"] else
                   "limited" if beat["error_kind"] == "rate_limited" else "failed")
        fill = {"ok": OK, "limited": LIMITED, "failed": FAILED}[outcome]
        cell = (f'<rect class="beat {outcome}" x="{i * (CELL + GAP)}" y="0" width="{CELL}" '
                f'height="{BAR_HEIGHT}" rx="1" fill="{fill}">'
                f"<title>{esc(probe_tip(beat))}</title></rect>")
        cells.append(link(beat["probe_id"], cell, True))
    return (f'<svg class="heartbeat" width="{width}" height="{BAR_HEIGHT}" '
            f'viewBox="0 0 {width} {BAR_HEIGHT}" xmlns="http://www.w3.org/2000/svg" '
            f'role="img" aria-label="{esc("latest probes of " + str(t["target"]))}">'
            f"{''.join(cells)}</svg>")


def _current(t: dict[str, Any]) -> str:
    """The model and fingerprint of the newest successful probe."""
    newest = next((b for b in reversed(t.get("heartbeat") or []) if b["ok"]), None)
    if newest is None:
        return "-"
    model = newest.get("model")
    return (f"<code>{esc(model or '-')}</code><br>"
            f"<code>{esc(newest['fingerprint'] or '-')}</code>")


def state_line(t: dict[str, Any]) -> str:
    """What the target's watch is doing (`state`, when the report has it), its warm-ups with
    their progress, and the slots skipped in the range."""
    parts = []
    state = t.get("state")
    if state:
        parts.append(f'<span class="summary">{esc(state["summary"])}</span>')
        for warmup in state.get("warmups") or []:
            seen, needed = int(warmup["seen"]), max(int(warmup["needed"]), 1)
            parts.append(f'<span class="warmup">{esc(warmup["baseline"])} '
                         f'<progress value="{min(seen, needed)}" max="{needed}">'
                         f"{seen} of {needed}</progress> {seen} of {needed}</span>")
    skipped = {kind: count for kind, count in (t.get("skipped") or {}).items() if count}
    if skipped:
        parts.append('<span class="skipped">skipped: ' + ", ".join(
            f"{esc(kind)} {number(count)}" for kind, count in sorted(skipped.items()))
            + "</span>")
    return "<br>".join(parts) or "-"
