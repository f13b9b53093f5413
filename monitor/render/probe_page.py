"""`/probes/{id}` of `monitor serve`: one stored probe in full, as `monitor show` prints it,
with links to the target's previous and next probes and back to the dashboard.

The answer, headers, body, error detail, model and fingerprint came from upstream: each passes
through `esc` (which also shows control characters as escapes). The page has no script, and
its policy admits none: markup that ever slipped through still could not run.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import Any

from monitor.render.fields import esc
from monitor.render.html import CSS_SOURCE, page
from monitor.render.probes import (
    answer_text,
    body_lines,
    change_lines,
    limits,
    outcome,
    timings,
    usage,
)
from monitor.render.text import when

# Bodies and headers keep their lines, wrapped rather than scrolled off the page.
_CSS = ("pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f6f6;padding:8px;"
        "margin:4px 0}h2{font-size:15px}")
_CSS_SOURCE = "'sha256-" + base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode() + "'"
# Sent as a header with the page: the two stylesheets, no script at all, no framing.
POLICY = (f"default-src 'none'; style-src {CSS_SOURCE} {_CSS_SOURCE}; img-src data:; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEAD = f'<link rel="icon" href="data:,"><style>{_CSS}</style>'


def render_probe_page(detail: dict[str, Any], now: datetime | None) -> str:
    """The page of one probe (`detail` as store.probe_reads.probe_detail gives it)."""
    p = detail["probe"]
    nav = ['<a href="/">dashboard</a>']
    if detail["previous_id"] is not None:
        nav.append(f'<a href="/probes/{int(detail["previous_id"])}" rel="prev">previous probe '
                   f'#{int(detail["previous_id"])}</a>')
    if detail["next_id"] is not None:
        nav.append(f'<a href="/probes/{int(detail["next_id"])}" rel="next">next probe '
                   f'#{int(detail["next_id"])}</a>')
    title = f"probe #{int(p['id'])} of {p['target']}"
    replay = ""
    if p.get("replay_of") is not None:
        original = int(p["replay_of"])
        replay = (f'<p class="meta">a replay of <a href="/probes/{original}">probe '
                  f"#{original}</a></p>")
    rows = [
        ("started", when(p["started_at"], now)),
        ("outcome", outcome(p) + (f": {p['error_detail']}" if p["error_detail"] else "")),
        ("model", p["model"] or "-"),
        ("system_fingerprint", p["system_fingerprint"] or "-"),
        ("finish reason", p["finish_reason"] or "-"),
        ("service tier", p["service_tier"] or "-"),
        ("stream", f"yes, {p['stream_chunks']} chunks" if p["stream"] else "no"),
        *timings(p),
        ("usage", usage(p)),
        ("rate limits", limits(p)),
        ("request id", p["x_request_id"] or "-"),
        ("uid", p["uid"]),
    ]
    summary = "".join(f"<tr><th>{esc(label)}</th><td>{esc(value)}</td></tr>"
                      for label, value in rows)
    answer = answer_text(p)
    headers = p["response_headers"] or {}
    header_rows = "".join(f"<tr><th><code>{esc(name)}</code></th><td><code>{esc(value)}"
                          "</code></td></tr>" for name, value in headers.items())
    how, body = body_lines(p)
    payload = json.dumps(p["request_payload"], indent=2, ensure_ascii=False).split("\n")
    body_html = (
        f'<nav>{" ".join(nav)}</nav>'
        f"<h1>{esc(title)}</h1>{replay}"
        f"<table>{summary}</table>"
        f"<h2>answer</h2>{_pre([] if answer is None else answer.split(chr(10)))}"
        f"<h2>changes</h2>{_changes(detail)}"
        f"<h2>response headers ({len(headers)}, redacted as stored)</h2>"
        f"<table>{header_rows or '<tr><td>none</td></tr>'}</table>"
        f"<h2>request payload</h2>{_pre(payload)}"
        f"<h2>raw body ({int(p['raw_response_bytes']):,} bytes, {esc(how)})</h2>{_pre(body)}"
    )
    return page(title, body_html, head=_HEAD)


def _pre(lines: list[str]) -> str:
    if not lines:
        return '<p class="meta">none</p>'
    return "<pre><code>" + "\n".join(esc(line) for line in lines) + "</code></pre>"


def _changes(detail: dict[str, Any]) -> str:
    changes = detail["changes"]
    lines = change_lines(changes)
    if changes is not None:
        base = int(changes["base_id"])
        lines = lines[1:]
        head = (f'<p>compared with <a href="/probes/{base}">'
                f'{"the original, " if changes["base_is_original"] else ""}probe #{base}</a>'
                f"</p>")
    else:
        head = ""
    return head + "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>"


def render_missing(probe_id: str) -> str:
    """The page for an id that names no stored probe."""
    return page("no such probe",
                f'<nav><a href="/">dashboard</a></nav><h1>No probe {esc(probe_id)}</h1>'
                "<p>This store holds no probe with that id: it may never have existed, or the "
                "database was emptied. <code>monitor logs</code> lists the stored ones.</p>",
                head=_HEAD)
