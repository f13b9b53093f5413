"""The report's traffic section (`monitor proxy`): the application's own calls per route and
requested model, shown beside the canaries and never counted in their numbers. Model names,
fingerprints and alert texts come from the app and the upstream: escaped like everything else.
"""

from __future__ import annotations

from typing import Any

from monitor.render.fields import esc, number, percent
from monitor.render.text import safe_text

COLUMNS = ("route", "model", "calls", "errors", "upstream p50 ms", "upstream p95 ms", "tokens",
           "fingerprints", "proxy p50 ms", "keys")
NOTE = ("The application's calls through monitor proxy, counted in whole UTC hours as last "
        "rolled up; not in any canary number. Drift on traffic: fingerprint, model, quota, "
        "availability (not latency: every prompt differs).")


def _cells(t: dict[str, Any]) -> list[str]:
    upstream = t["upstream_ms"] or {}
    fingerprints = ", ".join(f["fingerprint"] for f in t["fingerprints"][:3]) or "-"
    return [t["route"], t["model"], number(t["calls"]), percent(t["error_rate"]),
            number(upstream.get("p50")), number(upstream.get("p95")),
            number(t["tokens"]["total"]), fingerprints,
            number(t["proxy_added_ms_p50"], 2), number(t["credentials"])]


def traffic_text(rows: list[dict[str, Any]]) -> str:
    """The section for a terminal: one line per route and model, open alerts under it."""
    if not rows:
        return ""
    lines = ["traffic (monitor proxy; not counted above)", "  " + "  ".join(COLUMNS)]
    for t in rows:
        lines.append("  " + "  ".join(safe_text(cell, 60) for cell in _cells(t)))
        lines += [f"    ALERT {safe_text(a['kind'], 20)} {safe_text(a['explanation'], 200)}"
                  for a in t["open_alerts"]]
    return "\n".join(lines)


def traffic_html(rows: list[dict[str, Any]]) -> str:
    """The section as an HTML table (a report file and the dashboard)."""
    if not rows:
        return ""
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS) + "<th>open alerts</th>"
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in _cells(t))
        + f"<td>{esc('; '.join(a['explanation'] for a in t['open_alerts']) or '-')}</td></tr>"
        for t in rows)
    return (f'<section id="traffic"><h2>traffic</h2><p class="meta">{esc(NOTE)}</p>'
            f"<table><tr>{head}</tr>{body}</table></section>")
