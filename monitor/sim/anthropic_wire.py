"""Bytes on the wire for Anthropic's Messages API: Message bodies, the SSE event stream, error
bodies and headers, in the shapes Anthropic documents (and its SDK's types accept: see
tests/test_sim_anthropic.py).
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

from monitor.sim.responses import Event
from monitor.sim.state import Budget

ORGANIZATION_ID = "5c0d1e2f-0000-4000-8000-00000000a11e"
EVENT_STREAM = "text/event-stream; charset=utf-8"
JSON = "application/json"
# Base58-like: Anthropic's ids are "msg_01" / "req_01" / "toolu_01" and 22 such characters.
_ID_CHARS = "".join(c for c in string.ascii_letters + string.digits if c not in "0OIl")
# The error type Anthropic sends with each status; others get the type of their class.
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error",
}
_MESSAGES = {
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
    "timeout_error": "Request timed out",
}


@dataclass(frozen=True)
class Block:
    """One content block: text pieces (one per token), or a tool call and its input."""

    pieces: tuple[str, ...] = ()
    tool: str | None = None  # a tool_use block calling this tool
    tool_id: str = ""
    tool_input: str = "{}"  # JSON text


@dataclass(frozen=True)
class Message:
    """Everything decided about one successful Message, plain or streamed."""

    message_id: str
    model: str
    blocks: tuple[Block, ...]
    stop_reason: str
    input_tokens: int
    service_tier: str
    omit_content: bool = False  # the missing_fields fault

    @property
    def output_tokens(self) -> int:
        # A tool call costs about as many tokens as its input has words.
        return sum(len(block.pieces) or len(block.tool_input.split()) for block in self.blocks)


def new_id(rng: random.Random, prefix: str) -> str:
    return f"{prefix}_01" + "".join(rng.choices(_ID_CHARS, k=22))


def _block(block: Block) -> dict[str, Any]:
    if block.tool is not None:
        return {"type": "tool_use", "id": block.tool_id, "name": block.tool,
                "input": json.loads(block.tool_input)}
    return {"type": "text", "text": "".join(block.pieces)}


def _usage(message: Message, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": message.input_tokens, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens, "service_tier": message.service_tier}


def _message(message: Message, content: list[dict[str, Any]], stop_reason: str | None,
             output_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"id": message.message_id, "type": "message", "role": "assistant",
                            "model": message.model}
    if not message.omit_content:
        body["content"] = content
    body |= {"stop_reason": stop_reason, "stop_sequence": None,
             "usage": _usage(message, output_tokens)}
    return body


def body(message: Message) -> bytes:
    """A non-streaming Message (compact JSON, as Anthropic sends it)."""
    content = [_block(block) for block in message.blocks]
    return _json(_message(message, content, message.stop_reason, message.output_tokens))


def events(message: Message, ttft_s: float, per_token_s: float) -> list[Event]:
    """message_start, a ping, each block's start, deltas and stop, message_delta, message_stop."""
    start = _message(message, [], None, 1)
    out = [_event("message_start", {"type": "message_start", "message": start}, ttft_s)]
    for index, block in enumerate(message.blocks):
        blank: dict[str, Any] = {"input": {}} if block.tool else {"text": ""}
        opening = _block(block) | blank
        out.append(_event("content_block_start", {
            "type": "content_block_start", "index": index, "content_block": opening}))
        if index == 0:
            out.append(_event("ping", {"type": "ping"}))
        if block.tool is not None:
            half = len(block.tool_input) // 2
            for part in (block.tool_input[:half], block.tool_input[half:]):
                delta = {"type": "input_json_delta", "partial_json": part}
                out.append(_event("content_block_delta", {
                    "type": "content_block_delta", "index": index, "delta": delta},
                    per_token_s, content=True))
        for position, piece in enumerate(block.pieces):
            delta = {"type": "text_delta", "text": piece}
            out.append(_event("content_block_delta", {
                "type": "content_block_delta", "index": index, "delta": delta},
                per_token_s if position else 0.0, content=True))
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    usage = {k: v for k, v in _usage(message, message.output_tokens).items()
             if k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                      "output_tokens")}
    out.append(_event("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": message.stop_reason, "stop_sequence": None}, "usage": usage}))
    out.append(_event("message_stop", {"type": "message_stop"}))
    return out


def _event(name: str, payload: dict[str, Any], delay_s: float = 0.0, *,
           content: bool = False) -> Event:
    data = b"event: " + name.encode() + b"\ndata: " + _json(payload) + b"\n\n"
    return Event(data, delay_s, content)


def error(status: int, message: str | None, request_id: str) -> bytes:
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    text = message or _MESSAGES.get(kind, kind.replace("_", " ").capitalize())
    return _json({"type": "error", "error": {"type": kind, "message": text},
                  "request_id": request_id})


def headers(now: float, content_type: str, request_id: str, *, budget: Budget | None = None,
            retry_after_s: int | None = None) -> list[tuple[str, str]]:
    """Anthropic's headers in its order; rate-limit headers when a budget is given. Resets are
    RFC 3339 times; the simulator has one token budget, reported for tokens, input tokens and
    output tokens alike."""
    found = [("date", formatdate(now, usegmt=True)), ("content-type", content_type)]
    if retry_after_s is not None:
        found.append(("retry-after", str(retry_after_s)))
    if budget is not None:
        reset = datetime.fromtimestamp(int(now + budget.reset_s), UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        found += [("anthropic-ratelimit-requests-limit", str(budget.limit_requests)),
                  ("anthropic-ratelimit-requests-remaining", str(budget.remaining_requests)),
                  ("anthropic-ratelimit-requests-reset", reset)]
        for kind in ("input-tokens", "output-tokens", "tokens"):
            found += [(f"anthropic-ratelimit-{kind}-limit", str(budget.limit_tokens)),
                      (f"anthropic-ratelimit-{kind}-remaining", str(budget.remaining_tokens)),
                      (f"anthropic-ratelimit-{kind}-reset", reset)]
    found += [
        ("request-id", request_id),
        ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
        ("anthropic-organization-id", ORGANIZATION_ID),
        ("via", "1.1 google"),
        ("cf-cache-status", "DYNAMIC"),
        ("x-robots-tag", "none"),
        ("server", "cloudflare"),
    ]
    return found


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
