"""What a stored probe looks like in OpenTelemetry: the GenAI semantic conventions' names for
what monitor measured (https://opentelemetry.io/docs/specs/semconv/gen-ai/), and monitor's own
measurements under `monitor.*`.

Pure: a Target and a ProbeResult in, plain dicts out. Nothing here imports OpenTelemetry, so
the mapping is read (and tested) without the SDK; the README's attribute table follows it.
Values the conventions express in seconds are in seconds; monitor's own keep its `_ms`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import urlsplit

from monitor.domain import CheckOutcome, DriftEvent, ProbeResult, Provider, Target

Value = str | bool | int | float | Sequence[str]
Attributes = dict[str, Value]

OPERATION = "chat"  # every probe is a chat completion (or an Anthropic message)

# gen_ai.provider.name: the conventions' well-known values. An OpenAI-compatible server speaks
# OpenAI's API and gets OpenAI's flavour of telemetry (openai.* attributes); server.address
# tells which server it was.
PROVIDER_NAMES: dict[Provider, str] = {
    Provider.OPENAI: "openai",
    Provider.OPENAI_COMPATIBLE: "openai",
    Provider.AZURE: "azure.ai.openai",
    Provider.ANTHROPIC: "anthropic",
}

# Request parameters the conventions name, from the payload as sent.
_REQUEST_PARAMS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}

_DETAIL_LIMIT = 500  # characters of error_detail kept in the span status


def request_model(target: Target, result: ProbeResult) -> str | None:
    """The model asked for: the payload's `model`, or an Azure deployment's name."""
    model = result.request_payload.get("model")
    if isinstance(model, str):
        return model
    return target.deployment if target.provider is Provider.AZURE else target.model


def span_name(target: Target, result: ProbeResult) -> str:
    """`chat {gen_ai.request.model}`, or `chat` when no model is known."""
    model = request_model(target, result)
    return f"{OPERATION} {model}" if model else OPERATION


def _server(result: ProbeResult) -> Attributes:
    url = urlsplit(result.request_url)
    if not url.hostname:
        return {}
    return {"server.address": url.hostname,
            "server.port": url.port or (443 if url.scheme == "https" else 80)}


def _common(target: Target, result: ProbeResult) -> Attributes:
    """What spans and metrics share: the conventions' identifying attributes."""
    found: Attributes = {"gen_ai.operation.name": OPERATION,
                         "gen_ai.provider.name": PROVIDER_NAMES[target.provider]}
    if (model := request_model(target, result)) is not None:
        found["gen_ai.request.model"] = model
    if result.model is not None:
        found["gen_ai.response.model"] = result.model
    found.update(_server(result))
    if result.error_kind is not None:
        found["error.type"] = result.error_kind.value
    return found


def metric_attributes(target: Target, result: ProbeResult) -> Attributes:
    """The conventions' metric attributes, and the target (a few per daemon: low cardinality)."""
    return {**_common(target, result), "monitor.target": target.name}


def token_counts(target: Target, result: ProbeResult) -> tuple[int | None, int | None]:
    """(input, output) tokens as the conventions count them: input includes the tokens read
    from or written to a prompt cache, which Anthropic reports apart and OpenAI within."""
    usage = result.usage
    tokens_in = usage.prompt_tokens
    if tokens_in is not None and target.provider is Provider.ANTHROPIC:
        tokens_in += (usage.cached_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    return tokens_in, usage.completion_tokens


def _put(found: Attributes, key: str, value: Value | None) -> None:
    if value is not None:
        found[key] = value


def span_attributes(target: Target, result: ProbeResult) -> Attributes:
    """Every attribute of the probe's span."""
    found = _common(target, result)
    for param, key in _REQUEST_PARAMS.items():
        value = result.request_payload.get(param)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[key] = value
    _put(found, "gen_ai.response.id", result.response_id)
    reasons = [c.finish_reason for c in result.choices if c.finish_reason is not None]
    if reasons:
        found["gen_ai.response.finish_reasons"] = reasons
    tokens_in, tokens_out = token_counts(target, result)
    _put(found, "gen_ai.usage.input_tokens", tokens_in)
    _put(found, "gen_ai.usage.output_tokens", tokens_out)
    _put(found, "gen_ai.usage.cache_read.input_tokens", result.usage.cached_tokens)
    _put(found, "gen_ai.usage.cache_creation.input_tokens",
         result.usage.cache_creation_input_tokens)
    if target.provider is not Provider.ANTHROPIC:  # openai.* belong to OpenAI's flavour only
        _put(found, "openai.response.system_fingerprint", result.system_fingerprint)
        _put(found, "openai.response.service_tier", result.service_tier)
    if result.stream and result.time_to_first_token_ms is not None:
        found["gen_ai.response.time_to_first_chunk"] = result.time_to_first_token_ms / 1000
    _put(found, "http.response.status_code", result.http_status)
    found.update(_monitor(target, result))
    return found


def _monitor(target: Target, result: ProbeResult) -> Attributes:
    """monitor's own measurements: what the conventions have no name for."""
    found: Attributes = {"monitor.target": target.name, "monitor.probe.uid": result.uid,
                         "monitor.config_hash": result.config_hash,
                         "monitor.stream": result.stream}
    for key in ("time_to_headers_ms", "total_ms", "time_to_first_token_ms",
                "output_tokens_per_s", "openai_processing_ms", "retry_after_s", "stream_chunks"):
        _put(found, f"monitor.{key}", getattr(result, key))
    _put(found, "monitor.request_id", result.x_request_id)
    limits = result.rate_limits
    for key in ("limit_requests", "remaining_requests", "reset_requests_s",
                "limit_tokens", "remaining_tokens", "reset_tokens_s",
                "limit_input_tokens", "remaining_input_tokens", "reset_input_tokens_s",
                "limit_output_tokens", "remaining_output_tokens", "reset_output_tokens_s"):
        _put(found, f"monitor.ratelimit.{key}", getattr(limits, key))
    if result.checks:
        outcomes = [c.outcome for c in result.checks]
        found["monitor.checks.passed"] = outcomes.count(CheckOutcome.PASS)
        found["monitor.checks.failed"] = outcomes.count(CheckOutcome.FAIL)
        found["monitor.checks.not_applicable"] = outcomes.count(CheckOutcome.NOT_APPLICABLE)
        failed = [c.check for c in result.checks if c.outcome is CheckOutcome.FAIL]
        if failed:
            found["monitor.checks.failed_names"] = failed
    return found


def status_description(result: ProbeResult) -> str | None:
    """The span status's description of a failed probe: its one-line error, capped."""
    if result.ok:
        return None
    detail = result.error_detail or (result.error_kind.value if result.error_kind else "failed")
    return detail[:_DETAIL_LIMIT]


def drift_attributes(event: DriftEvent) -> Attributes:
    """A drift event (a condition opened or cleared at a probe) as span event attributes."""
    return {
        "monitor.drift.kind": event.kind.value,
        "monitor.drift.key": event.key,
        "monitor.drift.opened": event.opened,
        "monitor.drift.severity": event.severity.value,
        "monitor.drift.explanation": event.explanation,
        "monitor.drift.before": json.dumps(event.before, sort_keys=True, default=str),
        "monitor.drift.after": json.dumps(event.after, sort_keys=True, default=str),
        "monitor.drift.probe_uids": list(event.probe_uids),
    }
