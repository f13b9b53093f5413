"""`monitor report --format table`: one compact block per target for a terminal.

Fingerprints, models, error kinds, alert texts and error details come from servers and models:
each goes through `safe_text`, so none can move the cursor or recolour the terminal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from monitor.render.fields import PHASES, QUANTILES, moment, number, percent
from monitor.render.text import human_time, percentages, safe_text, when
from monitor.render.traffic import traffic_text

_LABEL = 14  # width of the field names on the left
REPLAYS_SHOWN = 20  # a terminal's worth; the JSON has them all


def render_table(doc: dict[str, Any]) -> str:
    """The report document (docs/report.md) as text, one block per target."""
    head = (f"report {human_time(doc['since'])} .. {human_time(doc['until'])}"
            f"  (generated {human_time(doc['generated_at'])})")
    traffic = [traffic_text(doc["traffic"])] if doc.get("traffic") else []
    if not doc["targets"]:
        return "\n\n".join([f"{head}\n\nno targets in this report", *traffic])
    now = moment(doc["generated_at"])  # "3 min ago" as of when the report was made
    replays = [_replays(doc["replays"], now)] if doc["replays"] else []
    return "\n\n".join([head] + [_block(t, now) for t in doc["targets"]] + replays + traffic)


def _row(label: str, value: str) -> str:
    return f"  {label:<{_LABEL}}{value}"


def _block(t: dict[str, Any], now: datetime) -> str:
    lines = [safe_text(t["target"])]
    ok_rate = f" ({percent(t['success_rate'], 2)})" if t["success_rate"] is not None else ""
    lines.append(_row("probes", f"{number(t['probes'])}, {number(t['ok'])} ok{ok_rate}"))
    errors = ", ".join(f"{safe_text(kind, 40)} {number(n)}" for kind, n in t["errors"].items())
    lines.append(_row("errors", errors or "none"))
    skipped = ", ".join(f"{kind} {number(n)}" for kind, n in t["skipped"].items())
    lines.append(_row("skipped slots", skipped or "none"))
    lines += _latency(t["latency_ms"])
    speed = t["output_tokens_per_s"]
    lines.append(_row("tokens/s", "  ".join(f"{q} {number(speed[q], 1)}" for q in QUANTILES)
                      if speed else "-"))
    tokens = t["tokens"]
    lines.append(_row("tokens", f"{number(tokens['prompt'])} prompt + "
                                f"{number(tokens['completion'])} completion = "
                                f"{number(tokens['total'])}"))
    lines.append(_row("fingerprints", _shares(t["fingerprints"], "fingerprint")))
    lines.append(_row("models", _shares(t["models"], "model")))
    lines.append(_row("rate limits", _limits(t["rate_limits"], now)))
    lines += _checks(t.get("checks", []))
    alerts = t["open_alerts"]
    lines.append(_row("open alerts", "none" if not alerts else str(len(alerts))))
    lines += [f"    #{a['id']} {safe_text(a['severity'], 10)} {safe_text(a['kind'], 20)} "
              f"{safe_text(a['key'], 40)} since {when(a['opened_at'], now)}: "
              f"{safe_text(a['explanation'], 160)}" for a in alerts]
    error = t["last_error"]
    if error is not None:
        status = error["http_status"] if error["http_status"] is not None else "-"
        lines.append(_row("last error", f"{when(error['at'], now)} "
                                        f"{safe_text(error['error_kind'], 40)} (HTTP {status}): "
                                        f"{safe_text(error['detail'] or '', 160)}"))
    return "\n".join(lines)


def _checks(checks: list[dict[str, Any]]) -> list[str]:
    """Each check's pass rate, then per backend where the answers came from more than one."""
    if not checks:
        return []
    lines = [_row("checks", ", ".join(f"{safe_text(c['check'], 64)} {_passed(c)}"
                                      for c in checks))]
    for c in checks:
        if len(c["by_backend"]) > 1:
            lines += [f"    {safe_text(c['check'], 64)} from {safe_text(b['fingerprint'] or '-', 40)}"
                      f" {safe_text(b['model'] or '-', 40)}: {_passed(b)}" for b in c["by_backend"]]
    return lines


def _passed(tally: dict[str, Any]) -> str:
    judged = tally["pass"] + tally["fail"]
    return f"{percent(tally['pass_rate'], 1)} ({number(tally['pass'])}/{number(judged)})"


def _replays(replays: list[dict[str, Any]], now: datetime) -> str:
    """The newest replays, one line each: they are kept out of every number above."""
    shown = replays[-REPLAYS_SHOWN:]
    lines = [f"replays ({len(replays)} in the range, not counted above"
             + (f"; the newest {len(shown)} shown, all with --format json)" if len(shown) <
                len(replays) else ")")]
    for r in shown:
        outcome = "ok" if r["ok"] else f"FAIL {safe_text(r['error_kind'] or '-', 30)}"
        lines.append(f"  #{r['probe_id']} of #{r['replay_of'] or '-'}  "
                     f"{safe_text(r['target'], 40)}  {when(r['t'], now)}  {outcome}  "
                     f"{number(r['total_ms'])} ms  {safe_text(r['model'] or '-', 40)}  "
                     f"{safe_text(r['fingerprint'] or '-', 40)}")
    return "\n".join(lines)


def _latency(latency: dict[str, Any]) -> list[str]:
    measured = [(phase, latency[phase]) for phase in PHASES if latency.get(phase)]
    if not measured:
        return [_row("latency ms", "-")]
    lines = [_row("latency ms", "".join(f"{q:>9}" for q in QUANTILES))]
    for phase, values in measured:
        lines.append(f"    {phase:<{_LABEL - 2}}"
                     + "".join(f"{number(values[q]):>9}" for q in QUANTILES))
    return lines


def _shares(entries: list[dict[str, Any]], key: str) -> str:
    if not entries:
        return "-"
    shares = percentages([e["count"] for e in entries])  # shown, they add to 100.0%
    return ", ".join(f"{safe_text(e[key], 40)} {share}"
                     for e, share in zip(entries, shares, strict=True))


def _limits(limits: dict[str, Any] | None, now: datetime) -> str:
    if limits is None:  # no probe in the range carried a rate-limit header
        return "-"
    parts = []
    for kind in ("requests", "tokens"):
        limit, left = limits[f"limit_{kind}"], limits[f"remaining_{kind}"]
        if limit is None and left is None:
            continue
        parts.append(f"{kind} {number(left)} of {number(limit)} left "
                     f"({percent(limits[f'headroom_{kind}'], 2)})")
    if not parts:
        return "-"
    return ", ".join(parts) + (f"  at {when(limits['at'], now)}" if limits["at"] else "")
