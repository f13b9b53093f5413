"""Rendering results for people. Model output and server text are untrusted: every string that
came from upstream goes through `safe_text` before it reaches a terminal."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from monitor.domain import ErrorKind, ProbeResult

# C0/C1 control characters (ESC starts terminal escape sequences), except tab; bidirectional
# overrides and isolates (they reorder what is shown: "gpt-4o" could display as another name);
# line and paragraph separators.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
                      "\u2028\u2029]")


def safe_text(text: str, limit: int = 80) -> str:
    """Printable on a terminal: control characters shown as escapes, long text shortened."""
    escaped = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def human_time(moment: datetime | str) -> str:
    """A stored time as a person reads it: UTC, to the second ("2026-05-01 12:04:05 UTC")."""
    value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(moment: datetime | str, now: datetime) -> str:
    """How long before `now` ("42 s ago", "3 min ago", "2 h ago", "5 d ago"; "in 3 min")."""
    value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    seconds = (now - value).total_seconds()
    span = abs(seconds)
    if span < 1:
        return "just now"
    for size, unit in ((86_400, "d"), (3600, "h"), (60, "min")):
        if span >= size:
            amount = f"{int(span // size)} {unit}"
            break
    else:
        amount = f"{int(span)} s"
    return f"{amount} ago" if seconds > 0 else f"in {amount}"


def when(moment: datetime | str | None, now: datetime | None = None) -> str:
    """human_time, and how long ago when `now` is known; "-" for no time at all."""
    if moment is None:
        return "-"
    shown = human_time(moment)
    return shown if now is None else f"{shown} ({ago(moment, now)})"


def percentages(counts: list[int], digits: int = 1) -> list[str]:
    """Each count's share of their sum as "12.5%", rounded so that the shares shown add to
    exactly 100% (largest remainder: the units lost to rounding go to the largest remainders)."""
    total = sum(counts)
    if total <= 0:
        return ["-" for _ in counts]
    unit = 10**digits  # hundredths of a percent for digits=2, and so on
    exact = [count * 100 * unit / total for count in counts]
    floors = [int(value) for value in exact]
    missing = 100 * unit - sum(floors)
    order = sorted(range(len(counts)), key=lambda i: (floors[i] - exact[i], i))
    for i in order[:missing]:
        floors[i] += 1
    return [f"{value / unit:.{digits}f}%" for value in floors]


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


def render_status(status: dict[str, Any], now: datetime) -> str:
    """`monitor status` for people: times to the second with how long ago."""
    size = status["bytes"]
    lines = [
        f"database        {status['database']}",
        f"schema          {status['schema_revision']}",
        f"history         {status['probes']} probes of {status['targets']} targets"
        + (f", {size / 1e6:.1f} MB" if size is not None else ""),
        f"spool backlog   {status['spool_backlog']} probes waiting for the database",
    ]
    if status.get("traffic_targets"):
        lines.append(f"traffic         {status['traffic_targets']} route/model targets recorded "
                     "by monitor proxy (drift: fingerprint, model, quota, availability; "
                     "latency is not judged on traffic)")
    alive = status["instances"]
    lines.append(f"instances       {len(alive)} alive" + "".join(
        f"\n  {i['id']}  since {when(i['started_at'], now)}  "
        f"heartbeat {when(i['heartbeat_at'], now)}" for i in alive))
    if status["last_probes"]:
        lines.append("last probe per target")
        width = max(len(p["target"]) for p in status["last_probes"])
        for last in status["last_probes"]:
            outcome = "ok" if last["ok"] else f"FAIL {last['error_kind']}"
            lines.append(f"  {safe_text(last['target']).ljust(width)}  "
                         f"{when(last['started_at'], now)}  {outcome}  "
                         f"{_n(last['total_ms'], ' ms')}")
    lines += _skipped(status["skipped_24h"])
    lines += _watch_lines(status["states"], status["open_alerts"], now)
    return "\n".join(lines)


def _watch_lines(states: dict[str, Any], open_alerts: list[dict[str, Any]],
                 now: datetime) -> list[str]:
    """What each configured target waits for (its warm-ups one per line when the summary
    names only the first), then the open alerts, newest first."""
    lines = []
    if states:
        lines.append("state per target")
        width = max(len(safe_text(name)) for name in states)
        for name, state in states.items():
            lines.append(f"  {safe_text(name).ljust(width)}  {state['summary']}")
            if len(state["warmups"]) > 1:
                lines += [f"  {'':{width}}    {w['baseline']}: {w['seen']} of {w['needed']} "
                          "probes" for w in state["warmups"]]
    lines.append(f"open alerts     {len(open_alerts) or 'none'}")
    for a in open_alerts:
        lines.append(f"  #{a['id']}  {a['severity']:<8} {safe_text(a['target'])}  {a['kind']} "
                     f"{safe_text(a['key'], 40)}  opened {when(a['opened_at'], now)}")
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


_ERROR_KINDS = {kind.value for kind in ErrorKind} | {"unknown_error"}


def _words(value: Any) -> str:
    """A stored before/after value in words rather than JSON (unescaped)."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(_words(v) for v in value) or "none"
    if not isinstance(value, dict):
        return str(value)
    if not value:
        return "none"
    if set(value) == {"p50_ms", "p95_ms", "n"}:  # latency
        return (f"p50 {_n(value['p50_ms'], ' ms')}, p95 {_n(value['p95_ms'], ' ms')} "
                f"over {value['n']} probes")
    if "error_rate" in value:  # availability over a window
        kinds = value.get("by_kind") or {}
        return (f"{value['error_rate']:.0%} of the last {value['n']} probes failed"
                + (f" ({_words(kinds)})" if kinds else ""))
    if set(value) == {"max_error_rate"}:
        return f"at most {value['max_error_rate']:.0%} failing"
    if set(value) <= _ERROR_KINDS:  # availability's run of failures, by error kind
        return f"{sum(value.values())} failed: " + ", ".join(
            f"{kind} {count}" for kind, count in sorted(value.items()))
    return ", ".join(f"{k.replace('_', ' ')} {_words(v)}" for k, v in value.items())


def change(alert: dict[str, Any], limit: int = 120) -> str:
    """An alert's before -> after in words, escaped for a terminal."""
    return (f"{safe_text(_words(alert['before']), limit)} -> "
            f"{safe_text(_words(alert['after']), limit)}")


def render_alerts(alerts: list[dict[str, Any]], now: datetime | None = None) -> str:
    if not alerts:
        return "no alerts"
    lines = []
    for a in alerts:
        when_text = f"opened {when(a['opened_at'], now)}"
        if a["resolved_at"]:
            when_text += f", resolved {when(a['resolved_at'], now)}"
        acked = f", acked by {safe_text(a['acked_by'] or '?')}" if a["acked_at"] else ""
        lines.append(f"#{a['id']}  {a['state'].upper():<8} {a['severity']:<8} "
                     f"{safe_text(a['target'])}  {a['kind']} {safe_text(a['key'])}  "
                     f"{when_text}{acked}")
        lines.append(f"      {change(a)}")
        lines.append(f"      {safe_text(a['resolution'] or a['explanation'], 200)}")
        ids = a.get("probe_ids") or []
        if ids:
            lines.append("      probes " + ", ".join(f"#{i}" for i in ids)
                         + " (`monitor show ID`)")
    return "\n".join(lines)


def render_fingerprints(history: list[dict[str, Any]], now: datetime | None = None) -> str:
    if not history:
        return "no fingerprints stored"
    blocks = []
    for entry in history:
        lines = [safe_text(entry["target"])]
        shares = percentages([f["count"] for f in entry["fingerprints"]])
        for f, share in zip(entry["fingerprints"], shares, strict=True):
            lines.append(f"  {safe_text(f['fingerprint'], 40):<24} {share:>7} "
                         f"{f['count']:>8} probes  first {when(f['first_seen'])}  "
                         f"last {when(f['last_seen'], now)}")
        if entry["timeline"]:
            lines.append("  changes")
            lines += [f"    {when(c['at'], now)}  {c['change']:<7} {safe_text(c['key'], 40)}: "
                      f"{safe_text(c['explanation'], 160)}" for c in entry["timeline"]]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_events(events: list[dict[str, Any]]) -> str:
    if not events:
        return "no drift events"
    return "\n".join(
        f"{when(e['at'])}  {safe_text(e['target'])}  {e['kind']} {safe_text(e['key'], 40)} "
        f"{'opened' if e['opened'] else 'cleared'} ({e['severity']}): "
        f"{safe_text(e['explanation'], 200)}"
        for e in events
    )
