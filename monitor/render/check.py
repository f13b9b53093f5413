"""What `monitor config check` shows: each resolved target (keys masked), what it will call
and send, and roughly what it costs a day."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from monitor.config.checks import (
    _DAY_MS,
)
from monitor.domain import OtelSettings, Settings
from monitor.durations import format_ms


def _estimate_prompt_tokens(messages: tuple[dict[str, Any], ...]) -> int:
    """An estimate, not a tokenizer: OpenAI's rule of thumb of ~4 characters a token, plus 4
    tokens of framing per message and 3 that prime the reply. Good for a budget, not a bill."""
    return sum(math.ceil(len(message["content"]) / 4) + 4 for message in messages) + 3


def describe(settings: Settings) -> list[dict[str, Any]]:
    """The resolved targets as JSON-able dicts, keys masked, with their estimated daily cost."""
    # Imported here so that loading config never depends on the layer that sends requests.
    from monitor.probe.providers import chat_url

    rows = []
    for target in settings.targets:
        cap = target.params.get("max_completion_tokens", target.params.get("max_tokens", 0))
        tokens_per_probe = _estimate_prompt_tokens(target.messages) + cap * target.params.get(
            "n", 1
        )
        probes_per_day = _DAY_MS / target.interval_ms
        rows.append(
            {
                "name": target.name,
                "provider": target.provider.value,
                "url": chat_url(target),
                "model": target.model,
                "deployment": target.deployment,
                "api_version": target.api_version,
                "stream": target.stream,
                "interval": format_ms(target.interval_ms),
                "timeout": format_ms(target.timeout_ms),
                "max_response_bytes": target.max_response_bytes,
                "api_key_env": target.api_key_env,
                "api_key": target.api_key.masked() if target.api_key else None,
                "messages": [dict(message) for message in target.messages],
                "params": copy.deepcopy(target.params),
                "config_hash": target.config_hash,
                "probes_per_day": round(probes_per_day, 2),
                "estimated_tokens_per_probe": tokens_per_probe,
                "expected_tokens_per_day": round(tokens_per_probe * probes_per_day),
                "daily_token_budget": target.daily_token_budget,
                "daily_request_budget": target.daily_request_budget,
                "checks": [{"name": check.name, "kind": check.kind.value,
                            "expected": copy.deepcopy(check.expected)} for check in target.checks],
            }
        )
    return rows


def _count(number: float) -> str:
    return f"{number:,.0f}" if number == int(number) else f"{number:,.2f}"


def render_check(settings: Settings) -> str:
    """The resolved targets as text: what each probe will call and send, and roughly what it costs."""
    rows = describe(settings)
    blocks = []
    for row in rows:
        fields = {
            "provider": row["provider"],
            "url": row["url"],
            "model": row["model"],
            "deployment": row["deployment"],
            "stream": "true" if row["stream"] else "false",
            "interval": row["interval"],
            "timeout": row["timeout"],
            "api key": f"{row['api_key_env']} = {row['api_key']}" if row["api_key_env"] else "none",
            "params": json.dumps(row["params"], sort_keys=True, ensure_ascii=False),
            "per day": f"{_count(row['probes_per_day'])} probes, "
            f"~{row['expected_tokens_per_day']:,} tokens (estimated)",
            "checks": ", ".join(c["name"] for c in row["checks"]) or None,
        }
        lines = [row["name"]]
        lines += [f"  {label:<10}  {value}" for label, value in fields.items() if value is not None]
        blocks.append("\n".join(lines))
    count = len(rows)
    probes = sum(row["probes_per_day"] for row in rows)
    tokens = sum(row["expected_tokens_per_day"] for row in rows)
    blocks.append(
        f"total: {count} target{'' if count == 1 else 's'}, {_count(probes)} probes/day, "
        f"~{tokens:,} tokens/day (estimated)"
    )
    if settings.otel is not None:
        blocks.append(_otel(settings.otel))
    return "\n\n".join(blocks)


def render_channels(rows: list[dict[str, str]]) -> str:
    """The notification channels: id, where it sends (redacted), what it takes, and where it
    was configured. `rows` come from monitor.alerts.channels.summary(): no URL is in them."""
    width = max(len(row["channel"]) for row in rows)
    where = max(len(row["destination"]) for row in rows)
    lines = ["notifications"]
    for row in rows:
        origin = f"  from {row['origin']}" if row["origin"] else ""
        lines.append(f"  {row['channel']:<{width}}  {row['destination']:<{where}}  takes "
                     f"{row['takes']}{origin}")
    return "\n".join(lines)


def _otel(otel: OtelSettings) -> str:
    """Where [otel] sends each probe's span; header values masked (they carry tokens)."""
    fields = {
        "endpoint": f"{otel.endpoint} (/v1/traces, /v1/metrics)",
        "service": otel.service_name,
        "timeout": format_ms(otel.timeout_ms),
        "metrics": "every " + (format_ms(otel.metrics_interval_ms) if otel.metrics_interval_ms
                               else "60s (or OTEL_METRIC_EXPORT_INTERVAL)"),
    }
    fields.update({f"header {name}": value.masked() for name, value in otel.headers})
    return "\n".join(["otel (OpenTelemetry export)"]
                     + [f"  {label:<10}  {value}" for label, value in fields.items()])
