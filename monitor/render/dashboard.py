"""`/` of `monitor serve`: open alerts, the status overview of every target, then the
charts of the chosen range (every probe a point up to 48 h), kept fresh.

Charts are drawn for up to CHARTS_UP_TO targets; with more, the overview stays one screen or
two and each target's name leads to its own view (`?target=NAME`) with its charts.

Every `refresh_s` seconds a small inline script fetches this same page again and swaps in its
<main>, so the server stays the only renderer of charts. The new <main> comes out of DOMParser,
which runs no script, and is moved with replaceWith: no untrusted string ever meets innerHTML.
With script disabled, a meta refresh in <noscript> reloads the page instead. The policy admits
the hashed script and style and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import urlencode

from monitor.render.fields import esc
from monitor.render.html import CSS_SOURCE, heading, page, severity_class, target_sections
from monitor.render.overview import render_overview
from monitor.render.text import human_time
from monitor.render.traffic import traffic_html

RANGES = ("10m", "1h", "6h", "24h", "48h", "7d", "30d")
CHARTS_UP_TO = 12

SCRIPT = """
"use strict";
(function () {
  var main = document.getElementById("report");
  var status = document.getElementById("refresh-status");
  var every = 1000 * Number(main.getAttribute("data-refresh-s"));
  function refresh() {
    fetch(window.location.href, {cache: "no-store", credentials: "same-origin"})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html")
          .getElementById("report");
        if (!fresh) { throw new Error("no report in the answer"); }
        main.replaceWith(fresh);
        main = fresh;
        status.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
      })
      .catch(function (error) {
        status.textContent = "refresh failed (" + error.message + "), retrying";
      })
      .then(function () { window.setTimeout(refresh, every); });
  }
  if (every > 0) { window.setTimeout(refresh, every); }
})();
"""
_SCRIPT_SOURCE = ("'sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest())
                  .decode() + "'")
# Sent as a header with the page: a header, unlike a meta tag, can also forbid framing.
POLICY = (f"default-src 'none'; script-src {_SCRIPT_SOURCE}; style-src {CSS_SOURCE}; "
          "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
          "frame-ancestors 'none'")


def render_dashboard(doc: dict[str, Any], open_alerts: list[dict[str, Any]], *,
                     since: str, targets: list[str] | None, refresh_s: int) -> str:
    """The dashboard page: range links, every open alert, the status overview, then the
    report's charts.

    `since` and `targets` are the request's own parameters, kept in the range links."""
    keep = [("target", t) for t in targets or []] + [("refresh", str(refresh_s))]
    links = " ".join(f'<a href="?{esc(urlencode([("since", r), *keep]))}">'
                     f'{f"<b>{r}</b>" if r == since else r}</a>' for r in RANGES)
    every = (f' <a href="?{esc(urlencode([("since", since), ("refresh", str(refresh_s))]))}">'
             "all targets</a>" if targets else "")
    nav = (f'<nav>last {links}{every} <span class="meta" id="refresh-status">refreshes every '
           f"{refresh_s} s</span></nav>")

    def target_href(name: str) -> str:
        return "?" + urlencode([("since", since), ("target", name), ("refresh", str(refresh_s))])

    if not doc["targets"]:
        charts = "<p>No targets in this report.</p>"
    elif len(doc["targets"]) > CHARTS_UP_TO:
        charts = (f'<p class="note">{len(doc["targets"])} targets: open one from the table '
                  "above to see its charts.</p>")
    else:
        charts = target_sections(doc, links=True)
    main = (f'<main id="report" data-refresh-s="{refresh_s}" '
            f'data-generated="{esc(doc["generated_at"])}">{heading(doc)}'
            f"{_alerts(open_alerts, targets)}{render_overview(doc, target_href)}{charts}"
            f"{traffic_html(doc.get('traffic', []))}</main>")
    head = (f'<link rel="icon" href="data:,"><noscript><meta http-equiv="refresh" '
            f'content="{refresh_s}"></noscript>')
    # At the end of <body>: the script looks up elements above it.
    return page("LLM API health", f"{nav}{main}<script>{SCRIPT}</script>", head=head)


def _alerts(alerts: list[dict[str, Any]], targets: list[str] | None) -> str:
    if targets:  # a target's own view shows its own alerts
        alerts = [a for a in alerts if a["target"] in targets]
    if not alerts:
        return '<p class="meta">No open alerts.</p>'
    rows = "".join(
        f'<tr><td>{esc(a["target"])}</td><td class="{severity_class(a["severity"])}">'
        f'{esc(a["severity"])}</td><td>{esc(a["kind"])}</td><td><code class="key">'
        f'{esc(a["key"])}</code></td><td>{esc(human_time(a["opened_at"]))}</td>'
        f'<td>{esc(a["explanation"])}</td></tr>'
        for a in alerts)
    return ("<h3>open alerts</h3><table><tr><th>target</th><th>severity</th><th>kind</th>"
            f"<th>key</th><th>opened</th><th>explanation</th></tr>{rows}</table>")
