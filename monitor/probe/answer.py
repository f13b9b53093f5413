"""An answer that fully arrived (status, captured headers, body bytes) -> the ProbeResult fields
it fills, or the classified failure. Pure: no HTTP, no clock, no database.

`probe.run` uses the pieces while it reads a canary's answer (feeding a stream as it arrives,
for time to first token); `read_answer` is the same decision on an answer already received
whole, which is how `monitor proxy` parses the application's recorded calls exactly like a
probe's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urljoin, urlsplit

from monitor.domain import ErrorKind, Provider
from monitor.probe import anthropic
from monitor.probe import headers as header_parsing
from monitor.probe.completion import (
    ID_LIMIT,
    Completion,
    CompletionError,
    StreamAssembler,
    error_message,
    parse_completion,
    storable_text,
)

_DETAIL_LIMIT = 300  # characters of an upstream message kept in error_detail
# Statuses with no IANA phrase that APIs send anyway.
_UNREGISTERED = {529: "Overloaded"}  # Anthropic's overloaded_error


class Failure(Exception):
    """Why an answer is not a completion: an ErrorKind and a sentence."""

    def __init__(self, kind: ErrorKind, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def assembler_for(provider: Provider, stream: bool, status: int,
                  content_type: str) -> StreamAssembler | None:
    """The stream parser for an answer that is a stream, else None."""
    if stream and status == 200 and "event-stream" in content_type:
        return anthropic.MessageStream() if provider is Provider.ANTHROPIC else StreamAssembler()
    return None


def parser_for(provider: Provider) -> Callable[[bytes], Completion]:
    return anthropic.parse_message if provider is Provider.ANTHROPIC else parse_completion


def header_fields(provider: Provider, headers: Mapping[str, str]) -> dict[str, Any]:
    """The ProbeResult fields the (captured) headers fill, retry_after_s included."""
    fields = (anthropic.header_fields(headers) if provider is Provider.ANTHROPIC
              else header_parsing.openai_fields(headers))
    return {"retry_after_s": header_parsing.retry_after_s(headers), **fields}


@dataclass(frozen=True)
class Reading:
    """What `read_answer` made of an answer: ProbeResult fields, and the failure if any."""

    fields: dict[str, Any]
    failure: Failure | None


def read_answer(provider: Provider, stream: bool, status: int, headers: dict[str, str],
                body: bytes, url: str, *, first_token_ms: float | None = None,
                total_ms: float | None = None) -> Reading:
    """Decide, as `probe.run` does, what a whole answer says: a completion's fields (model,
    fingerprint, usage, choices, tokens/s when `first_token_ms` and `total_ms` are known), or
    a classified failure (HTTP status, content type, invalid JSON, a broken stream), keeping
    what a broken stream did deliver. `headers` are captured (lower-cased, redacted)."""
    fields: dict[str, Any] = {"http_status": status, "response_headers": headers}
    if first_token_ms is not None:
        fields["time_to_first_token_ms"] = first_token_ms
    if total_ms is not None:
        fields["total_ms"] = total_ms
    assembler = assembler_for(provider, stream, status, headers.get("content-type", ""))
    failure: Failure | None = None
    completion: Completion | None = None
    try:
        if assembler is not None:
            feed(assembler, body)
        completion = interpret(fields, body, assembler, stream, url, parser_for(provider))
    except Failure as exc:
        failure = exc
    if assembler is not None and completion is None and assembler.chunks:
        completion = assembler.partial()
    if completion is not None:
        fields.update(completion_fields(completion, fields))
    return Reading(fields, failure)


def feed(assembler: StreamAssembler, piece: bytes) -> None:
    try:
        assembler.feed(piece)
    except CompletionError as exc:
        raise Failure(exc.kind, exc.detail) from None


def interpret(
    fields: dict[str, Any],
    body: bytes,
    assembler: StreamAssembler | None,
    stream: bool,
    url: str,
    parse: Callable[[bytes], Completion],
) -> Completion:
    """Decide success or failure from the status, content type and body that fully arrived."""
    status: int = fields["http_status"]
    headers: dict[str, str] = fields["response_headers"]
    content_type = headers.get("content-type", "")
    if status != 200:
        raise Failure(*http_failure(status, headers, body, url))
    try:
        if assembler is not None:
            return assembler.finish()
        if "json" not in content_type.lower():
            shown = content_type or "no content type"
            expected = "text/event-stream or application/json" if stream else "application/json"
            raise Failure(
                ErrorKind.UNEXPECTED_CONTENT_TYPE,
                f"Expected {expected}, got {shown} ({len(body)} bytes)",
            )
        # A server that ignores `stream: true` and answers plain JSON is still answering.
        return parse(body)
    except CompletionError as exc:
        raise Failure(exc.kind, exc.detail) from None


def completion_fields(completion: Completion, fields: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {
        "response_id": completion.response_id,
        "response_created": completion.created,
        "model": completion.model,
        "system_fingerprint": completion.system_fingerprint,
        "service_tier": completion.service_tier,
        "choices": completion.choices,
        "usage": completion.usage,
        "stream_chunks": completion.stream_chunks,
    }
    first_token_ms = fields.get("time_to_first_token_ms")
    tokens = completion.usage.completion_tokens
    total_ms = fields.get("total_ms")
    # The first token is excluded: it arrives at first_token_ms, not during the interval. So
    # a one-token answer has no speed at all (None, not 0: nothing was measured).
    if (first_token_ms is not None and tokens is not None and tokens > 1 and total_ms
            and total_ms > first_token_ms):
        values["output_tokens_per_s"] = (tokens - 1) / ((total_ms - first_token_ms) / 1000)
    return values


def http_failure(
    status: int, headers: Mapping[str, str], body: bytes, url: str
) -> tuple[ErrorKind, str]:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = _UNREGISTERED.get(status, "status")
    location = headers.get("location")
    if 300 <= status < 400 and location is not None:
        # Never followed: the key header must reach no host but the configured one.
        return ErrorKind.UNEXPECTED_REDIRECT, (
            f"HTTP {status} {phrase}: redirect to {_host_of(url, location)} not followed"
        )
    message = _upstream_message(headers.get("content-type", ""), body)
    detail = f"HTTP {status} {phrase}" + (f": {message}" if message else "")
    if status == 429:
        wait = header_parsing.retry_after_s(headers)
        if wait is not None:
            detail += f" (retry after {wait:g} s)"
        return ErrorKind.RATE_LIMITED, detail
    if status in (401, 403):
        return ErrorKind.AUTH_ERROR, detail
    if 400 <= status < 500:
        return ErrorKind.HTTP_CLIENT_ERROR, detail
    if status >= 500:
        return ErrorKind.HTTP_SERVER_ERROR, detail
    return ErrorKind.UNEXPECTED_STATUS, detail


def _host_of(url: str, location: str) -> str:
    """The host (and port) a Location points at, resolved against the request URL."""
    try:
        parts = urlsplit(urljoin(url, location))
        host = parts.hostname or "an unnamed host"
        port = parts.port
    except ValueError:
        return "an unreadable location"
    return storable_text(f"{host}:{port}" if port else host, ID_LIMIT)


def _upstream_message(content_type: str, body: bytes) -> str | None:
    if not body:
        return None
    if "json" in content_type:
        try:
            message = error_message(json.loads(body))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            message = None
        if message:
            return _shorten(message)
    text = body.decode("utf-8", "replace")
    if "html" in content_type or text.lstrip().startswith("<"):
        start, end = text.find("<title>"), text.find("</title>")
        if 0 <= start < end:
            return _shorten("HTML page: " + text[start + 7 : end].strip())
        return "an HTML page"
    return _shorten(text)


def _shorten(text: str) -> str:
    text = " ".join(storable_text(text).split())
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"
