"""`monitor report --format html`: one self-contained file (inline CSS and SVG, no script, no
network) with charts per target followed by the numbers. The dashboard reuses its pieces.

Fingerprints, models, error kinds and details and alert texts are untrusted and pass through
`esc`. A Content-Security-Policy in the file forbids every script besides, so markup that ever
slipped through still could not run.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from monitor.render import charts
from monitor.render.fields import PHASES, QUANTILES, esc, number, percent
from monitor.render.text import human_time, percentages
from monitor.render.traffic import traffic_html

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
margin:0 auto;padding:16px 24px;max-width:980px;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;
border-top:1px solid #ddd;padding-top:16px}h3{font-size:13px;margin:12px 0 2px;color:#555}
.meta{color:#666;margin:0 0 12px}
table{border-collapse:collapse;margin:6px 0}td,th{padding:2px 10px 2px 0;text-align:left;
vertical-align:top}th{color:#555;font-weight:600}td.n{text-align:right;
font-variant-numeric:tabular-nums}
svg.chart{display:block;width:100%;height:auto}svg.chart text{font-size:10px;fill:#555}
ul.legend{list-style:none;padding:0;margin:2px 0;display:flex;flex-wrap:wrap;gap:4px 16px}
.sev-critical{color:#c0392b;font-weight:600}.sev-warning{color:#b35900}.bad{color:#c0392b}
code{font-size:12px;word-break:break-all}nav a{margin-right:10px}
.wide{overflow-x:auto}svg.heartbeat{display:block}tr.status td{vertical-align:middle;
padding-top:3px;padding-bottom:3px}td.state{font-size:12px;color:#444;min-width:180px}
progress{width:60px;height:8px;vertical-align:middle}.note{color:#555}
code.key,tr.status code{word-break:normal;white-space:nowrap}
"""
# The hash lets a Content-Security-Policy admit this style block and nothing else.
CSS_SOURCE = "'sha256-" + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode() + "'"
_FILE_POLICY = f"default-src 'none'; style-src {CSS_SOURCE}"


def render_html(doc: dict[str, Any]) -> str:
    """The report document as a single HTML file that opens without script or network."""
    return page("LLM API health report", report_body(doc), policy=_FILE_POLICY)


def page(title: str, body: str, *, policy: str | None = None, head: str = "") -> str:
    """A whole HTML document; `policy` goes in a CSP meta tag (a server sends it as a header)."""
    meta = (f'<meta http-equiv="Content-Security-Policy" content="{esc(policy)}">'
            if policy else "")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{meta}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style>{head}</head>"
            f"<body>{body}</body></html>\n")


def report_body(doc: dict[str, Any]) -> str:
    """The title, a summary of every target, then a section per target."""
    traffic = traffic_html(doc.get("traffic", []))
    if not doc["targets"]:
        return heading(doc) + "<p>No targets in this report.</p>" + traffic
    return (heading(doc) + _summary(doc["targets"]) + target_sections(doc)
            + _replays(doc["replays"]) + traffic)


def heading(doc: dict[str, Any]) -> str:
    return (f"<h1>LLM API health</h1><p class=\"meta\">{esc(human_time(doc['since']))} to "
            f"{esc(human_time(doc['until']))}, generated "
            f"{esc(human_time(doc['generated_at']))}</p>")


def target_sections(doc: dict[str, Any], *, links: bool = False) -> str:
    """A section per target, their charts on one time axis; `links` makes probes link to
    their pages (on the dashboard; a report file has no pages to link to)."""
    frame = charts.frame_of(doc)
    return "".join(target_section(t, frame, f"target-{i}", links=links)
                   for i, t in enumerate(doc["targets"]))


def _replays(replays: list[dict[str, Any]]) -> str:
    """Replays in the range, kept apart: none of the numbers above counts them."""
    if not replays:
        return ""
    rows = "".join(
        f'<tr><td class="n">{esc(r["probe_id"])}</td><td class="n">{esc(r["replay_of"] or "-")}'
        f'</td><td>{esc(r["target"])}</td><td>{esc(human_time(r["t"]))}</td>'
        f'<td class="{"" if r["ok"] else "bad"}">{"ok" if r["ok"] else esc(r["error_kind"])}</td>'
        f'<td class="n">{number(r["total_ms"])}</td><td><code>{esc(r["model"] or "-")}</code>'
        f'</td><td><code>{esc(r["fingerprint"] or "-")}</code></td></tr>' for r in replays)
    return ('<section id="replays"><h2>replays</h2><p class="meta">Stored requests sent again '
            "(<code>monitor replay</code>): not counted in any number above.</p><table><tr>"
            "<th>probe</th><th>re-sent</th><th>target</th><th>at</th><th>outcome</th>"
            "<th>total ms</th><th>model</th><th>fingerprint</th></tr>" + rows
            + "</table></section>")


def _summary(targets: list[dict[str, Any]]) -> str:
    rows = []
    for i, t in enumerate(targets):
        total = t["latency_ms"]["total"] or {}
        rate = t["success_rate"]
        rows.append(f'<tr><td><a href="#target-{i}">{esc(t["target"])}</a></td>'
                    f'<td class="n">{number(t["probes"])}</td>'
                    f'<td class="n{" bad" if rate is not None and rate < 0.99 else ""}">'
                    f'{percent(rate, 2)}</td><td class="n">{number(total.get("p50"))}</td>'
                    f'<td class="n">{number(total.get("p95"))}</td>'
                    f'<td class="n">{len(t["open_alerts"])}</td></tr>')
    return ("<table><tr><th>target</th><th>probes</th><th>success</th><th>p50 ms</th>"
            "<th>p95 ms</th><th>open alerts</th></tr>" + "".join(rows) + "</table>")


def target_section(t: dict[str, Any], frame: charts.Frame, anchor: str, *,
                   links: bool = False) -> str:
    """One target: latency, fingerprint and headroom charts, then its numbers."""
    colours = charts.fingerprint_colours(t)
    points = charts.rows(t["series"])
    legend = "".join(
        f'<li><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" '
        f'fill="{colour}"/></svg> <code>{esc(name)}</code> {_share(t, name)}</li>'
        for name, colour in colours.items())
    by_probe = t["series"]["bucket"] == "probe"
    return (f'<section class="target" id="{anchor}"><h2>{esc(t["target"])}</h2>'
            + ("<h3>latency of the whole probe, every probe (ms; failed probes in red)</h3>"
               if by_probe else
               "<h3>latency of the whole probe, p50 and the p50-p95 band (ms)</h3>")
            + f"{charts.latency_chart(t, points, frame, links=links)}"
            + ("<h3>system_fingerprint of every probe</h3>" if by_probe else
               "<h3>system_fingerprint, the most frequent per bucket</h3>")
            + f"{charts.fingerprint_stripe(t, points, frame, colours)}"
            f'<ul class="legend">{legend}</ul>'
            + ("<h3>rate-limit headroom of every probe</h3>" if by_probe else
               "<h3>rate-limit headroom, the lowest per bucket</h3>")
            + f"{charts.headroom_chart(t, points, frame)}{_numbers(t)}"
            + f"{_checks(t.get('checks', []))}</section>")


def _checks(checks: list[dict[str, Any]]) -> str:
    """Each check's pass rate, overall and per backend (fingerprint and model): one backend
    that answers worse than the others stands out."""
    if not checks:
        return ""
    rows = []
    for c in checks:
        rows.append(_check_row(esc(c["check"]), "all answers", c))
        rows += [_check_row("", f"<code>{esc(b['fingerprint'] or '-')}</code> "
                                f"{esc(b['model'] or '-')}", b) for b in c["by_backend"]]
    return ("<h3>checks on the answers</h3><table><tr><th>check</th><th>from</th>"
            "<th>pass</th><th>fail</th><th>n/a</th><th>pass rate</th></tr>"
            + "".join(rows) + "</table>")


def _check_row(check: str, source: str, tally: dict[str, Any]) -> str:
    rate = tally["pass_rate"]
    return (f'<tr><td>{check}</td><td>{source}</td><td class="n">{number(tally["pass"])}</td>'
            f'<td class="n">{number(tally["fail"])}</td>'
            f'<td class="n">{number(tally["not_applicable"])}</td>'
            f'<td class="n{" bad" if rate is not None and rate < 0.95 else ""}">'
            f'{percent(rate, 1)}</td></tr>')


def _share(t: dict[str, Any], fingerprint: str) -> str:
    return _shares(t["fingerprints"], "fingerprint").get(fingerprint, "-")


def _shares(entries: list[dict[str, Any]], field: str) -> dict[str, str]:
    """Each value's share as shown: rounded so that the shares add to exactly 100.0%."""
    shown = percentages([e["count"] for e in entries])
    return {e[field]: share for e, share in zip(entries, shown, strict=True)}


def _numbers(t: dict[str, Any]) -> str:
    rows = [("probes", (f"{number(t['probes'])}, {number(t['ok'])} ok "
                       f"({percent(t['success_rate'], 2)})")),
            ("errors", ", ".join(f"{esc(k)} {number(n)}" for k, n in t["errors"].items())
             or "none"),
            ("skipped slots", ", ".join(f"{esc(k)} {number(n)}" for k, n in t["skipped"].items())
             or "none")]
    speed = t["output_tokens_per_s"]
    rows.append(("output tokens/s", "  ".join(f"{q} {number(speed[q], 1)}" for q in QUANTILES)
                 if speed else "-"))
    tokens = t["tokens"]
    rows.append(("tokens", (f"{number(tokens['prompt'])} prompt + "
                           f"{number(tokens['completion'])} completion = "
                           f"{number(tokens['total'])}")))
    for key in ("fingerprints", "models"):
        field = key[:-1]
        shares = _shares(t[key], field)
        rows.append((key, ", ".join(f"<code>{esc(value)}</code> {share}"
                                    for value, share in shares.items()) or "-"))
    rows.append(("rate limits", _limits(t["rate_limits"])))
    rows.append(("open alerts", _open_alerts(t["open_alerts"])))
    error = t["last_error"]
    if error is not None:
        rows.append(("last error", (f"{esc(human_time(error['at']))} "
                                   f"<code>{esc(error['error_kind'])}"
                                   f"</code> (HTTP {esc(error['http_status'] or '-')}): "
                                   f"{esc(error['detail'] or '')}")))
    return _latency(t["latency_ms"]) + "<table>" + "".join(
        f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in rows) + "</table>"


def _latency(latency: dict[str, Any]) -> str:
    measured = [(phase, latency[phase]) for phase in PHASES if latency.get(phase)]
    if not measured:
        return "<p>latency: no successful probes in this range</p>"
    head = "<tr><th>latency ms</th>" + "".join(f"<th>{q}</th>" for q in QUANTILES) + "</tr>"
    rows = "".join(f"<tr><td>{phase}</td>"
                   + "".join(f'<td class="n">{number(values[q])}</td>' for q in QUANTILES)
                   + "</tr>" for phase, values in measured)
    return f"<table>{head}{rows}</table>"


def _limits(limits: dict[str, Any] | None) -> str:
    if limits is None:  # no probe in the range carried a rate-limit header
        return "-"
    parts = [f"{kind} {number(limits[f'remaining_{kind}'])} of "
             f"{number(limits[f'limit_{kind}'])} left "
             f"({percent(limits[f'headroom_{kind}'], 2)})"
             for kind in ("requests", "tokens")
             if limits[f"limit_{kind}"] is not None or limits[f"remaining_{kind}"] is not None]
    if not parts:
        return "-"
    return ", ".join(parts) + (f" at {esc(human_time(limits['at']))}" if limits["at"] else "")


def _open_alerts(alerts: list[dict[str, Any]]) -> str:
    if not alerts:
        return "none"
    return "<br>".join(
        f'<span class="{severity_class(a["severity"])}">#{esc(a["id"])} '
        f'{esc(a["severity"])}</span> {esc(a["kind"])} <code>{esc(a["key"])}</code> since '
        f'{esc(human_time(a["opened_at"]))}: {esc(a["explanation"])}' for a in alerts)


def severity_class(severity: str) -> str:
    return f"sev-{severity}" if severity in charts.SEVERITY else "sev-other"
