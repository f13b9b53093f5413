"""Parse Chat Completions bodies and SSE streams into plain fields; no HTTP, no clock.

Servers differ (see tests/fixtures): some omit `system_fingerprint` or send "", some ignore
`stream_options` and send no usage, some end a stream without `data: [DONE]`. Whatever was sent
is recorded as sent; whatever was not is None. A body that cannot be a completion raises
CompletionError with the ErrorKind the probe stores.

Values are made storable here, at parse time, because the server is not trusted: strings lose
NUL characters and lone surrogates (neither PostgreSQL nor UTF-8 can hold them) and identifiers
are bounded; integers outside the signed 64-bit range and timestamps no datetime can hold
become None; JSON nested too deeply to parse is an invalid response, not a crash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.domain import Choice, ErrorKind, ToolCall, Usage


class CompletionError(Exception):
    def __init__(self, kind: ErrorKind, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Completion:
    response_id: str | None
    created: int | None
    model: str | None
    system_fingerprint: str | None
    service_tier: str | None
    choices: tuple[Choice, ...]
    usage: Usage
    stream_chunks: int | None = None


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# 9999-12-31T23:59:59Z, the last second a Python datetime can hold.
LAST_TIMESTAMP = 253_402_300_799
# Identifiers (id, model, fingerprint) and short words (service tier, finish reason): no real
# server sends longer ones, and a bounded value stores in every backend's column.
ID_LIMIT = 200
WORD_LIMIT = 40
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(value: str, limit: int | None = None) -> str:
    """`value` without NULs, lone surrogates as U+FFFD, cut to `limit` characters."""
    if _UNSTORABLE.search(value):
        value = _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", value)
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "\u2026"
    return value


def _int(value: object) -> int | None:
    # bool is an int in Python; a server sending `true` for a count sent no count.
    if isinstance(value, int) and not isinstance(value, bool):
        return value if INT64_MIN <= value <= INT64_MAX else None
    return None


def _timestamp(value: object) -> int | None:
    seconds = _int(value)
    return seconds if seconds is not None and 0 <= seconds <= LAST_TIMESTAMP else None


def _str(value: object, limit: int | None = None) -> str | None:
    return storable_text(value, limit) if isinstance(value, str) else None


def parse_usage(usage: object) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    prompt = usage.get("prompt_tokens_details")
    prompt = prompt if isinstance(prompt, dict) else {}
    completion = usage.get("completion_tokens_details")
    completion = completion if isinstance(completion, dict) else {}
    return Usage(
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        total_tokens=_int(usage.get("total_tokens")),
        cached_tokens=_int(prompt.get("cached_tokens")),
        prompt_audio_tokens=_int(prompt.get("audio_tokens")),
        reasoning_tokens=_int(completion.get("reasoning_tokens")),
        completion_audio_tokens=_int(completion.get("audio_tokens")),
        accepted_prediction_tokens=_int(completion.get("accepted_prediction_tokens")),
        rejected_prediction_tokens=_int(completion.get("rejected_prediction_tokens")),
    )


def _load_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompletionError(ErrorKind.INVALID_JSON, f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise CompletionError(
            ErrorKind.INVALID_RESPONSE, f"{what} is JSON nested too deeply to read"
        ) from None
    if not isinstance(document, dict):
        raise CompletionError(
            ErrorKind.INVALID_RESPONSE, f"{what} is JSON {type(document).__name__}, not an object"
        )
    return document


def _refuse_error_document(document: dict[str, Any], what: str) -> None:
    if "choices" not in document and ("error" in document or "detail" in document):
        message = error_message(document) or "an error object"
        raise CompletionError(ErrorKind.INVALID_RESPONSE, f"{what} is an error: {message}")


def parse_completion(data: bytes) -> Completion:
    """A non-streaming `chat.completion` body."""
    document = _load_object(data, "response body")
    _refuse_error_document(document, "response body")
    raw_choices = document.get("choices")
    if not isinstance(raw_choices, list) or not all(isinstance(c, dict) for c in raw_choices):
        raise CompletionError(
            ErrorKind.INVALID_RESPONSE, "response body has no `choices` list of objects"
        )
    choices = []
    for position, raw in enumerate(raw_choices):
        message = raw.get("message")
        if not isinstance(message, dict):
            raise CompletionError(
                ErrorKind.INVALID_RESPONSE, f"response body choices[{position}] has no `message`"
            )
        index = _int(raw.get("index"))
        choices.append(
            Choice(
                index=position if index is None else index,
                finish_reason=_str(raw.get("finish_reason"), WORD_LIMIT),
                content=_str(message.get("content")),
                refusal=_str(message.get("refusal")),
                tool_calls=_tool_calls(message.get("tool_calls")),
            )
        )
    return _completion(document, tuple(choices), document.get("usage"))


def _tool_calls(calls: object) -> tuple[ToolCall, ...]:
    """A message's `tool_calls` (function calls; anything else sent there is left out)."""
    if not isinstance(calls, list):
        return ()
    return tuple(ToolCall(_str(f.get("name"), ID_LIMIT), _str(f.get("arguments")),
                          _str(call.get("id"), ID_LIMIT))
                 for call in calls if isinstance(call, dict)
                 if isinstance(f := call.get("function"), dict))


def _completion(
    fields: dict[str, Any], choices: tuple[Choice, ...], usage: object, chunks: int | None = None
) -> Completion:
    """The top-level fields of a completion (or of a stream's chunks), as sent."""
    return Completion(
        response_id=_str(fields.get("id"), ID_LIMIT),
        created=_timestamp(fields.get("created")),
        model=_str(fields.get("model"), ID_LIMIT),
        system_fingerprint=_str(fields.get("system_fingerprint"), ID_LIMIT),
        service_tier=_str(fields.get("service_tier"), WORD_LIMIT),
        choices=choices,
        usage=parse_usage(usage),
        stream_chunks=chunks,
    )


def error_message(document: object) -> str | None:
    """The human message of an error body: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}."""
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    detail = document.get("detail")
    if isinstance(detail, str):
        return detail
    if detail is not None:
        try:
            return json.dumps(detail)[:300]
        except (RecursionError, ValueError):
            return None
    return None


@dataclass
class _ChoiceParts:
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    # tool call index -> its function's name and arguments and the call's id, streamed in pieces
    tools: dict[int, tuple[list[str], list[str], list[str]]] = field(default_factory=dict)


class StreamAssembler:
    """Feeds on raw SSE bytes as they arrive; reassembles the completion when the stream ends."""

    def __init__(self) -> None:
        self._buffer = b""
        self._choices: dict[int, _ChoiceParts] = {}
        self._fields: dict[str, Any] = {}
        self._usage: object = None
        self.chunks = 0
        self.done = False  # saw `data: [DONE]`
        self.saw_content = False

    def feed(self, data: bytes) -> None:
        """Parse every complete event in `data`; raises CompletionError on a malformed chunk."""
        buffer = self._buffer + data
        # Events are sliced out by position and the rest is kept once at the end: cutting the
        # buffer after each event would copy it once per event (minutes for a flood of tiny
        # events).
        start = 0
        lf, crlf = buffer.find(b"\n\n"), buffer.find(b"\r\n\r\n")
        try:
            while lf >= 0 or crlf >= 0:
                if crlf >= 0 and (lf < 0 or crlf < lf):
                    end, following = crlf, crlf + 4
                else:
                    end, following = lf, lf + 2
                event, start = buffer[start:end], following
                self._event(event)
                if 0 <= lf < start:
                    lf = buffer.find(b"\n\n", start)
                if 0 <= crlf < start:
                    crlf = buffer.find(b"\r\n\r\n", start)
        finally:
            self._buffer = buffer[start:]

    def _event(self, event: bytes) -> None:
        lines = event.replace(b"\r\n", b"\n").split(b"\n")
        data = b"\n".join(
            line[5:].lstrip(b" ") if line.startswith(b"data:") else b""
            for line in lines
            if line.startswith(b"data:")
        )
        if not data:
            return  # comments (": keep-alive"), `event:` or `id:` only
        if data.strip() == b"[DONE]":
            self.done = True
            return
        chunk = _load_object(data, f"stream chunk {self.chunks + 1}")
        _refuse_error_document(chunk, f"stream chunk {self.chunks + 1}")
        self.chunks += 1
        for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if name in chunk and chunk[name] is not None:
                self._fields[name] = chunk[name]
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        for raw in chunk.get("choices") or ():
            if not isinstance(raw, dict):
                continue
            index = _int(raw.get("index")) or 0
            parts = self._choices.setdefault(index, _ChoiceParts())
            delta = raw.get("delta")
            if isinstance(delta, dict):
                for key, target in (("content", parts.content), ("refusal", parts.refusal)):
                    piece = delta.get(key)
                    if isinstance(piece, str) and piece:
                        target.append(piece)
                        self.saw_content = True
                _add_tool_pieces(parts, delta.get("tool_calls"))
            if isinstance(raw.get("finish_reason"), str):
                parts.finish_reason = raw["finish_reason"]

    def finish(self) -> Completion:
        """The reassembled completion; TRUNCATED_STREAM if the stream stopped before its end."""
        leftover, self._buffer = self._buffer, b""
        parse_leftover(leftover, self._event, f"chunk {self.chunks + 1}")
        finished = bool(self._choices) and all(
            p.finish_reason is not None for p in self._choices.values()
        )
        if not (self.done or finished):
            raise CompletionError(
                ErrorKind.TRUNCATED_STREAM,
                f"stream ended after {self.chunks} chunks without a finish_reason or [DONE]",
            )
        if not self._choices and self.chunks == 0:
            raise CompletionError(ErrorKind.INVALID_RESPONSE, "stream carried no chunks")
        return self.partial()

    def partial(self) -> Completion:
        """What the chunks received so far say, finished or not."""
        choices = tuple(
            Choice(
                index=index,
                finish_reason=_str(parts.finish_reason, WORD_LIMIT),
                content=storable_text("".join(parts.content)) if parts.content else None,
                refusal=storable_text("".join(parts.refusal)) if parts.refusal else None,
                tool_calls=tuple(
                    ToolCall(_str("".join(name), ID_LIMIT), _str("".join(arguments)),
                             _str("".join(call_id), ID_LIMIT) if call_id else None)
                    for _, (name, arguments, call_id) in sorted(parts.tools.items())),
            )
            for index, parts in sorted(self._choices.items())
        )
        return _completion(self._fields, choices, self._usage, self.chunks)


def parse_leftover(leftover: bytes, parse: Callable[[bytes], None], where: str) -> None:
    """The bytes after a stream's last blank line. A last event without its blank line still
    counts (some servers omit it); one that does not parse was cut off in transit."""
    if not leftover.strip():
        return
    try:
        parse(leftover)
    except CompletionError as exc:
        if exc.kind is not ErrorKind.INVALID_JSON:
            raise
        raise CompletionError(
            ErrorKind.TRUNCATED_STREAM, f"stream ended inside {where} ({len(leftover)} bytes)",
        ) from None


def _add_tool_pieces(parts: _ChoiceParts, calls: object) -> None:
    """A delta's `tool_calls`: each piece of a function's name or arguments, by call index."""
    if not isinstance(calls, list):
        return
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        name, arguments, call_id = parts.tools.setdefault(
            _int(call.get("index")) or 0, ([], [], []))
        for key, pieces in (("name", name), ("arguments", arguments)):
            if isinstance(function.get(key), str):
                pieces.append(function[key])
        if isinstance(call.get("id"), str):  # sent with the call's first piece
            call_id.append(call["id"])
