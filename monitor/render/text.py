"""Rendering results for people. Model output and server text are untrusted: every string that
came from upstream goes through `safe_text` before it reaches a terminal."""

from __future__ import annotations

import json
import re
from typing import Any

from monitor.domain import ProbeResult

# C0/C1 control characters (ESC starts terminal escape sequences), except tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def safe_text(text: str, limit: int = 80) -> str:
    """Printable on a terminal: control characters shown as escapes, long text shortened."""
    escaped = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def _n(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.0f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def probe_line(result: ProbeResult, name_width: int = 0) -> str:
    """One line: target, status, total ms, model, fingerprint, tokens, remaining quota."""
    name = result.target_name.ljust(name_width)
    status = str(result.http_status) if result.http_status is not None else "---"
    if not result.ok:
        kind = result.error_kind.value if result.error_kind else "error"
        detail = safe_text(result.error_detail or "", 120)
        return f"{name}  FAIL {status}  {_n(result.total_ms, ' ms'):>8}  {kind}: {detail}"
    usage = result.usage
    limits = result.rate_limits
    tokens = f"{_n(usage.prompt_tokens)}+{_n(usage.completion_tokens)} tok"
    remaining = f"left {_n(limits.remaining_requests)} req/{_n(limits.remaining_tokens)} tok"
    parts = [
        f"{name}  ok   {status}  {_n(result.total_ms, ' ms'):>8}",
        safe_text(result.model or "-", 40),
        safe_text(result.system_fingerprint or "-", 40),
        tokens,
        remaining,
    ]
    if result.time_to_first_token_ms is not None:
        parts.insert(1, f"ttft {_n(result.time_to_first_token_ms, ' ms')}")
    return "  ".join(parts)


def render_status(status: dict[str, Any]) -> str:
    size = status["bytes"]
    lines = [
        f"database        {status['database']}",
        f"schema          {status['schema_revision']}",
        f"history         {status['probes']} probes of {status['targets']} targets"
        + (f", {size / 1e6:.1f} MB" if size is not None else ""),
        f"spool backlog   {status['spool_backlog']} probes waiting for the database",
    ]
    alive = status["instances"]
    lines.append(f"instances       {len(alive)} alive" + "".join(
        f"\n  {i['id']}  since {i['started_at']}  heartbeat {i['heartbeat_at']}" for i in alive))
    if status["last_probes"]:
        lines.append("last probe per target")
        width = max(len(p["target"]) for p in status["last_probes"])
        for last in status["last_probes"]:
            outcome = "ok" if last["ok"] else f"FAIL {last['error_kind']}"
            lines.append(f"  {safe_text(last['target']).ljust(width)}  {last['started_at']}  "
                         f"{outcome}  {_n(last['total_ms'], ' ms')}")
    lines += _skipped(status["skipped_24h"])
    lines += _watch_lines(status["states"], status["open_alerts"])
    return "\n".join(lines)


def _watch_lines(states: dict[str, Any], open_alerts: list[dict[str, Any]]) -> list[str]:
    """What each configured target waits for (its warm-ups one per line), then the open
    alerts, newest first."""
    lines = []
    if states:
        lines.append("state per target")
        width = max(len(safe_text(name)) for name in states)
        for name, state in states.items():
            lines.append(f"  {safe_text(name).ljust(width)}  {state['summary']}")
            lines += [f"  {'':{width}}    {w['baseline']}: {w['seen']} of {w['needed']} probes"
                      for w in state["warmups"]]
    lines.append(f"open alerts     {len(open_alerts) or 'none'}")
    for a in open_alerts:
        lines.append(f"  #{a['id']}  {a['severity']:<8} {safe_text(a['target'])}  {a['kind']} "
                     f"{safe_text(a['key'], 40)}  opened {a['opened_at']}")
        lines.append(f"      {safe_text(a['explanation'], 200)}")
    return lines


def _skipped(skipped: dict[str, dict[str, int]]) -> list[str]:
    if not skipped:
        return ["skipped slots   none in the last 24 h"]
    width = max(len(safe_text(name)) for name in skipped)
    return ["skipped slots in the last 24 h"] + [
        f"  {safe_text(name).ljust(width)}  "
        + ", ".join(f"{kind} {count}" for kind, count in kinds.items())
        for name, kinds in skipped.items()]


def _value(value: Any, limit: int = 60) -> str:
    """A before/after value (server-sent, untrusted) on one line."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return safe_text(text, limit)


def render_alerts(alerts: list[dict[str, Any]]) -> str:
    if not alerts:
        return "no alerts"
    lines = []
    for a in alerts:
        when = f"opened {a['opened_at']}"
        if a["resolved_at"]:
            when += f", resolved {a['resolved_at']}"
        acked = f", acked by {safe_text(a['acked_by'] or '?')}" if a["acked_at"] else ""
        lines.append(f"#{a['id']}  {a['state'].upper():<8} {a['severity']:<8} "
                     f"{safe_text(a['target'])}  {a['kind']} {safe_text(a['key'])}  "
                     f"{when}{acked}")
        lines.append(f"      {_value(a['before'])} -> {_value(a['after'])}")
        lines.append(f"      {safe_text(a['resolution'] or a['explanation'], 200)}")
    return "\n".join(lines)


def render_fingerprints(history: list[dict[str, Any]]) -> str:
    if not history:
        return "no fingerprints stored"
    blocks = []
    for entry in history:
        lines = [safe_text(entry["target"])]
        for f in entry["fingerprints"]:
            lines.append(f"  {safe_text(f['fingerprint'], 40):<24} {f['share']:>7.1%} "
                         f"{f['count']:>8} probes  first {f['first_seen']}  "
                         f"last {f['last_seen']}")
        if entry["timeline"]:
            lines.append("  changes")
            lines += [f"    {c['at']}  {c['change']:<7} {safe_text(c['key'], 40)}: "
                      f"{safe_text(c['explanation'], 160)}" for c in entry["timeline"]]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_events(events: list[dict[str, Any]]) -> str:
    if not events:
        return "no drift events"
    return "\n".join(
        f"{e['at']}  {safe_text(e['target'])}  {e['kind']} {safe_text(e['key'], 40)} "
        f"{'opened' if e['opened'] else 'cleared'} ({e['severity']}): "
        f"{safe_text(e['explanation'], 200)}"
        for e in events
    )
