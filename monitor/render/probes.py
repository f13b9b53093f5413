"""Stored probes for a terminal: `monitor logs` (one line each) and `monitor show` (one in
full), plus what the /probes/{id} page shares with them (the body laid out, the timings).

Everything a server or a model sent (answers, headers, bodies, error details, fingerprints)
is untrusted: it reaches the terminal only through `safe_text`, line by line, so no escape
sequence in it can move the cursor or recolour the screen.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from monitor.render.text import safe_text, when

_WIDE = 10_000  # a line of a body or a header value is shown whole, only escaped


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def answer_text(record: dict[str, Any]) -> str | None:
    """The first choice's content (or refusal); None when there is no answer."""
    choices = record.get("choices") or []
    if not choices:
        return None
    first = choices[0]
    content = first.get("content")
    found = content if content is not None else first.get("refusal")
    return None if found is None else str(found)


def outcome(record: dict[str, Any]) -> str:
    """"ok 200", "http_server_error 503", "read_timeout -"."""
    status = record["http_status"] if record["http_status"] is not None else "-"
    return f"ok {status}" if record["ok"] else f"{record['error_kind'] or 'failed'} {status}"


def _excerpt(record: dict[str, Any]) -> str:
    text = answer_text(record) if record["ok"] else record.get("error_detail")
    return "-" if text is None else json.dumps(text, ensure_ascii=False)


def log_line(record: dict[str, Any], now: datetime | None, width: int = 0) -> str:
    """One probe on one line: id, time, target, outcome, total, model, fingerprint, answer."""
    parts = [
        f"#{record['id']}",
        when(record["started_at"], now),
        safe_text(record["target"], 40).ljust(width),
        outcome(record).ljust(8),
        _ms(record["total_ms"]).rjust(9),
        safe_text(record["model"] or "-", 40),
        safe_text(record["system_fingerprint"] or "-", 30),
        safe_text(_excerpt(record), 60),
    ]
    if record.get("replay_of") is not None:
        parts.append(f"(replay of #{record['replay_of']})")
    return "  ".join(parts)


def render_logs(records: list[dict[str, Any]], now: datetime | None) -> str:
    if not records:
        return "no probes stored (yet) that match"
    width = max(len(safe_text(r["target"], 40)) for r in records)
    return "\n".join(log_line(r, now, width) for r in records)


def body_lines(record: dict[str, Any]) -> tuple[str, list[str]]:
    """The raw body laid out for reading, as (how, lines), unescaped: "json" pretty-printed,
    "sse" one line per event (JSON data compact), "text" as received, or "base64" for bytes
    that are not UTF-8. The lines still need escaping for wherever they are shown."""
    if "raw_response_base64" in record:
        encoded = record["raw_response_base64"]
        return "base64", [encoded[i:i + 76] for i in range(0, len(encoded), 76)]
    raw = record.get("raw_response") or ""
    if record.get("stream") and raw.lstrip().startswith(("data:", "event:", ":")):
        return "sse", _events(raw)
    try:
        parsed = json.loads(raw)
    except ValueError:
        return "text", raw.split("\n")
    return "json", json.dumps(parsed, indent=2, ensure_ascii=False).split("\n")


def _events(raw: str) -> list[str]:
    lines = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        fields = []
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                try:
                    value = json.dumps(json.loads(value), ensure_ascii=False,
                                       separators=(",", ":"))
                except ValueError:
                    pass
            fields.append(f"{name}: {value}" if name else line)
        lines.append(" | ".join(fields))
    return lines


def timings(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The measured durations, each "-" where it was not measured (or is undefined)."""
    speed = record.get("output_tokens_per_s")
    return [
        ("headers after", _ms(record["time_to_headers_ms"])),
        ("first token after", _ms(record["time_to_first_token_ms"])),
        ("total", _ms(record["total_ms"])),
        ("server processing", _ms(record["openai_processing_ms"])),
        ("output tokens/s", "-" if speed is None else f"{speed:,.1f}"),
    ]


def usage(record: dict[str, Any]) -> str:
    text = (f"{_count(record['prompt_tokens'])} prompt + "
            f"{_count(record['completion_tokens'])} completion = "
            f"{_count(record['total_tokens'])} tokens")
    extra = [f"{label} {_count(record[key])}" for key, label in (
        ("cached_tokens", "cached"), ("reasoning_tokens", "reasoning"))
        if record.get(key)]
    return text + (f" ({', '.join(extra)})" if extra else "")


def limits(record: dict[str, Any]) -> str:
    parts = []
    for kind in ("requests", "tokens"):
        left = record[f"ratelimit_remaining_{kind}"]
        limit = record[f"ratelimit_limit_{kind}"]
        if left is None and limit is None:
            continue
        reset = record[f"ratelimit_reset_{kind}_s"]
        parts.append(f"{kind} {_count(left)} of {_count(limit)} left"
                     + (f" (resets in {reset:g} s)" if reset is not None else ""))
    return ", ".join(parts) or "-"


def change_lines(changes: dict[str, Any] | None) -> list[str]:
    """What changed since the compared probe, in words, unescaped."""
    if changes is None:
        return ["nothing to compare with: the target's first probe"]
    base = (f"the original, probe #{changes['base_id']}" if changes["base_is_original"]
            else f"probe #{changes['base_id']}")
    lines = [f"compared with {base}"]
    lines += [f"{c['field']}: {_plain(c['before'])} -> {_plain(c['after'])}"
              for c in changes["fields"]]
    lines.append("answer text: changed, was " + json.dumps(changes["answer_before"],
                                                           ensure_ascii=False)
                 if changes["answer_changed"] else "answer text: unchanged")
    changed = changes["headers_changed"]
    if changed:
        lines.append("headers with a new value: " + ", ".join(c["name"] for c in changed))
    lines += [f"header added: {name}: {value}"
              for name, value in changes["headers_added"].items()]
    lines += [f"header gone: {name} (was {value})"
              for name, value in changes["headers_removed"].items()]
    return lines


def _plain(value: Any) -> str:
    return "-" if value is None else str(value)


def render_probe(detail: dict[str, Any], now: datetime | None) -> str:
    """One probe in full (`monitor show`): every line escaped."""
    p = detail["probe"]
    head = f"probe #{p['id']} of {safe_text(p['target'], 200)}"
    if p.get("replay_of") is not None:
        head += f", a replay of probe #{p['replay_of']}"
    rows = [
        ("started", when(p["started_at"], now)),
        ("outcome", outcome(p) + (f": {p['error_detail']}" if p["error_detail"] else "")),
        ("model", p["model"] or "-"),
        ("fingerprint", p["system_fingerprint"] or "-"),
        ("finish reason", p["finish_reason"] or "-"),
        ("service tier", p["service_tier"] or "-"),
        ("stream", f"yes, {_count(p['stream_chunks'])} chunks" if p["stream"] else "no"),
        *timings(p),
        ("usage", usage(p)),
        ("rate limits", limits(p)),
        ("request id", p["x_request_id"] or "-"),
        ("uid", p["uid"]),
    ]
    neighbours = [f"previous #{detail['previous_id']}" if detail["previous_id"] else None,
                  f"next #{detail['next_id']}" if detail["next_id"] else None]
    rows.append(("same target", ", ".join(n for n in neighbours if n) or "no other probes"))
    lines = [head] + [f"  {label:<18}{safe_text(str(value), _WIDE)}" for label, value in rows]
    answer = answer_text(p)
    lines.append("answer")
    lines += _block(["-"] if answer is None else answer.split("\n"))
    lines.append("changes")
    lines += _block(change_lines(detail["changes"]))
    headers = p["response_headers"] or {}
    lines.append(f"response headers ({len(headers)}, redacted as stored)")
    lines += _block([f"{name}: {value}" for name, value in headers.items()] or ["-"])
    lines.append("request payload")
    lines += _block(json.dumps(p["request_payload"], indent=2, ensure_ascii=False).split("\n"))
    how, body = body_lines(p)
    lines.append(f"raw body ({_count(p['raw_response_bytes'])} bytes, {how})")
    lines += _block(body)
    return "\n".join(lines)


def _block(lines: list[str]) -> list[str]:
    return [f"  {safe_text(line, _WIDE)}" for line in lines]
