"""Parse Anthropic Messages API answers into the fields an OpenAI probe fills; no HTTP, no clock.

Where each of Anthropic's fields lands (README "Anthropic" lists the same):
- headers: `request-id` -> x_request_id, `anthropic-organization-id` -> openai_organization,
  `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}` ->
  rate_limits (requests, tokens, input_tokens, output_tokens). A reset is an RFC 3339 time: the
  header keeps it as sent, the number is the seconds from the response's `date` to it (None
  without a `date`: nothing to measure from).
- body: `id` -> response_id, `model`, `stop_reason` -> finish_reason, text blocks joined ->
  content, `tool_use` blocks -> tool_calls (ToolCall: name, the input as JSON text, id),
  `usage.input_tokens` -> prompt_tokens, `output_tokens` -> completion_tokens,
  `cache_read_input_tokens` -> cached_tokens, `cache_creation_input_tokens` as itself,
  `usage.service_tier` -> service_tier. total_tokens is their sum (Anthropic sends none): the
  daily token budget counts it. There is no `created` and no `system_fingerprint`.
- streams: `message_start` gives the id, model and first usage; `content_block_*` the blocks
  (`text_delta`, `input_json_delta`); `message_delta` the stop reason and the final usage,
  merged over the first; `message_stop` ends it. `error` events fail the probe with the kind
  their `error.type` maps to, as the same error would as an HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from monitor.domain import Choice, ErrorKind, RateLimits, ToolCall, Usage
from monitor.probe.completion import (
    ID_LIMIT,
    WORD_LIMIT,
    Completion,
    CompletionError,
    StreamAssembler,
    _int,
    _load_object,
    _str,
    parse_leftover,
    storable_text,
)
from monitor.probe.headers import count, text

# Anthropic's error types, classified as the HTTP status each comes with would be.
ERROR_KINDS = {
    "invalid_request_error": ErrorKind.HTTP_CLIENT_ERROR,
    "authentication_error": ErrorKind.AUTH_ERROR,
    "permission_error": ErrorKind.AUTH_ERROR,
    "billing_error": ErrorKind.HTTP_CLIENT_ERROR,
    "not_found_error": ErrorKind.HTTP_CLIENT_ERROR,
    "request_too_large": ErrorKind.HTTP_CLIENT_ERROR,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "api_error": ErrorKind.HTTP_SERVER_ERROR,
    "timeout_error": ErrorKind.HTTP_SERVER_ERROR,
    "overloaded_error": ErrorKind.HTTP_SERVER_ERROR,
}
_LIMITS = ("requests", "tokens", "input_tokens", "output_tokens")


def header_fields(headers: Mapping[str, str]) -> dict[str, Any]:
    """The ProbeResult fields Anthropic's headers fill."""
    return {
        "openai_organization": text(headers, "anthropic-organization-id", ID_LIMIT),
        "x_request_id": text(headers, "request-id", ID_LIMIT),
        "rate_limits": rate_limits(headers),
    }


def rate_limits(headers: Mapping[str, str]) -> RateLimits:
    values: dict[str, Any] = {}
    sent_at = _http_date(headers.get("date"))
    for limit in _LIMITS:
        prefix = "anthropic-ratelimit-" + limit.replace("_", "-")
        values[f"limit_{limit}"] = count(headers, f"{prefix}-limit")
        values[f"remaining_{limit}"] = count(headers, f"{prefix}-remaining")
        values[f"reset_{limit}_s"] = _seconds_until(headers.get(f"{prefix}-reset"), sent_at)
    return RateLimits(**values)


def _http_date(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return when if when.tzinfo is not None else None


def _seconds_until(value: str | None, sent_at: datetime | None) -> float | None:
    if value is None or sent_at is None:
        return None
    try:
        reset = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if reset.tzinfo is None:
        return None  # RFC 3339 always has an offset: a time without one is not comparable
    return max(0.0, (reset - sent_at).total_seconds())


def error_kind(document: object) -> ErrorKind | None:
    """The kind an Anthropic error document ({"type": "error", "error": {"type"}}) stands for."""
    if not isinstance(document, dict) or document.get("type") != "error":
        return None
    error = document.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    return ERROR_KINDS.get(kind, ErrorKind.INVALID_RESPONSE) if isinstance(kind, str) else (
        ErrorKind.INVALID_RESPONSE)


def _error(document: dict[str, Any], what: str) -> CompletionError:
    error = document.get("error")
    error = error if isinstance(error, dict) else {}
    kind, message = _str(error.get("type"), WORD_LIMIT), _str(error.get("message"))
    detail = f"{what} is an error" + (f" ({kind})" if kind else "") + (
        f": {message}" if message else "")
    return CompletionError(error_kind(document) or ErrorKind.INVALID_RESPONSE, detail)


def parse_message(data: bytes) -> Completion:
    """A non-streaming Message body."""
    document = _load_object(data, "response body")
    if document.get("type") == "error":
        raise _error(document, "response body")
    blocks = document.get("content")
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise CompletionError(
            ErrorKind.INVALID_RESPONSE, "response body has no `content` list of objects")
    parts = _Blocks()
    for index, block in enumerate(blocks):
        parts.start(index, block)
    return _message(document, parts, document.get("stop_reason"), document.get("usage"))


@dataclass
class _Blocks:
    """Content blocks by index: text pieces, and tool calls' inputs as JSON text."""

    text: dict[int, list[str]] = field(default_factory=dict)
    tools: dict[int, dict[str, Any]] = field(default_factory=dict)

    def start(self, index: int, block: dict[str, Any]) -> None:
        if block.get("type") == "text":
            self.text[index] = [block["text"]] if isinstance(block.get("text"), str) else []
        elif block.get("type") == "tool_use":
            given = block.get("input")
            # A stream starts a tool call with `input: {}` and sends the JSON in deltas.
            arguments = [] if given in (None, {}) else [json.dumps(given, ensure_ascii=False)]
            self.tools[index] = {"id": block.get("id"), "name": block.get("name"),
                                 "arguments": arguments}

    def content(self) -> str | None:
        pieces = [piece for _, text in sorted(self.text.items()) for piece in text]
        return storable_text("".join(pieces)) if pieces else None

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(_str(tool["name"], ID_LIMIT),
                     storable_text("".join(tool["arguments"]) or "{}"), _str(tool["id"], ID_LIMIT))
            for _, tool in sorted(self.tools.items()))


def _usage(usage: object) -> tuple[Usage, str | None]:
    if not isinstance(usage, dict):
        return Usage(), None
    prompt, completion = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
    created = _int(usage.get("cache_creation_input_tokens"))
    read = _int(usage.get("cache_read_input_tokens"))
    total = None
    if prompt is not None and completion is not None:
        total = prompt + completion + (created or 0) + (read or 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total,
                 cached_tokens=read, cache_creation_input_tokens=created), _str(
                     usage.get("service_tier"), WORD_LIMIT)


def _message(fields: dict[str, Any], blocks: _Blocks, stop_reason: object, usage: object,
             chunks: int | None = None) -> Completion:
    parsed, tier = _usage(usage)
    choice = Choice(index=0, finish_reason=_str(stop_reason, WORD_LIMIT),
                    content=blocks.content(), tool_calls=blocks.tool_calls())
    return Completion(
        response_id=_str(fields.get("id"), ID_LIMIT),
        created=None,
        model=_str(fields.get("model"), ID_LIMIT),
        system_fingerprint=None,
        service_tier=tier,
        choices=(choice,),
        usage=parsed,
        stream_chunks=chunks,
    )


class MessageStream(StreamAssembler):
    """Feeds on a Messages API event stream (SSE framing as in StreamAssembler.feed)."""

    def __init__(self) -> None:
        super().__init__()
        self._blocks = _Blocks()
        self._usage_fields: dict[str, Any] = {}
        self._stop_reason: object = None

    def _event(self, event: bytes) -> None:
        lines = event.replace(b"\r\n", b"\n").split(b"\n")
        data = b"\n".join(line[5:].lstrip(b" ") for line in lines if line.startswith(b"data:"))
        if not data:
            return  # comments and `event:` lines alone
        what = f"stream event {self.chunks + 1}"
        document = _load_object(data, what)
        self.chunks += 1
        kind = document.get("type")
        if kind == "error":
            raise _error(document, what)
        if kind == "message_start" and isinstance(document.get("message"), dict):
            message = document["message"]
            self._fields.update({k: message[k] for k in ("id", "model") if k in message})
            self._merge_usage(message.get("usage"))
        elif kind == "content_block_start" and isinstance(document.get("content_block"), dict):
            self._blocks.start(_int(document.get("index")) or 0, document["content_block"])
        elif kind == "content_block_delta" and isinstance(document.get("delta"), dict):
            self._delta(_int(document.get("index")) or 0, document["delta"])
        elif kind == "message_delta":
            delta = document.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                self._stop_reason = delta["stop_reason"]
            self._merge_usage(document.get("usage"))
        elif kind == "message_stop":
            self.done = True

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
            self._blocks.text.setdefault(index, []).append(delta["text"])
            if delta["text"]:
                self.saw_content = True  # time to first token: the first text delta
        elif (delta.get("type") == "input_json_delta" and index in self._blocks.tools
              and isinstance(delta.get("partial_json"), str)):
            self._blocks.tools[index]["arguments"].append(delta["partial_json"])

    def _merge_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            # message_delta's counts are cumulative: they replace message_start's.
            self._usage_fields.update({k: v for k, v in usage.items() if v is not None})

    def finish(self) -> Completion:
        """The reassembled message; TRUNCATED_STREAM if it stopped before `message_stop`."""
        leftover, self._buffer = self._buffer, b""
        parse_leftover(leftover, self._event, f"event {self.chunks + 1}")
        if self.chunks == 0:
            raise CompletionError(ErrorKind.INVALID_RESPONSE, "stream carried no events")
        if not self.done:
            raise CompletionError(
                ErrorKind.TRUNCATED_STREAM,
                f"stream ended after {self.chunks} events without message_stop",
            )
        return self.partial()

    def partial(self) -> Completion:
        usage = self._usage_fields or None
        return _message(self._fields, self._blocks, self._stop_reason, usage, self.chunks)
