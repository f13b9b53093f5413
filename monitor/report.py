"""Rendering results for people. Model output and server text are untrusted: every string that
came from upstream goes through `safe_text` before it reaches a terminal."""

from __future__ import annotations

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
    return "\n".join(lines)
