"""Bytes on the wire: completion bodies, stream chunks, error bodies and headers in the shapes
OpenAI and Azure send them (compare tests/fixtures/openai-chat-completion.json).

Builders return finished bytes, so the server writes a plain response with one sendall and each
stream event, chunk framing included, with one write.
"""

from __future__ import annotations

import json
import random
import string
import time
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from monitor.sim.state import Budget

OPENAI_VERSION = "2020-10-01"
ORGANIZATION = "user-simulator"
PROJECT = "proj_simulator"
AZURE_REGION = "East US"
_ALPHANUMERIC = string.ascii_letters + string.digits
_COOKIE_CHARS = _ALPHANUMERIC + "._"
_SAFE = {"filtered": False, "severity": "safe"}
_NOT_DETECTED = {"filtered": False, "detected": False}
_PROMPT_FILTERS = [{
    "prompt_index": 0,
    "content_filter_results": {
        "hate": _SAFE, "jailbreak": _NOT_DETECTED, "self_harm": _SAFE, "sexual": _SAFE,
        "violence": _SAFE,
    },
}]
_CHOICE_FILTERS = {
    "hate": _SAFE, "protected_material_code": _NOT_DETECTED,
    "protected_material_text": _NOT_DETECTED, "self_harm": _SAFE, "sexual": _SAFE,
    "violence": _SAFE,
}
# What a Cloudflare or nginx gateway sends when the origin behind it fails.
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
JSON = "application/json"
EVENT_STREAM = "text/event-stream; charset=utf-8"
LAST_CHUNK = b"0\r\n\r\n"


@dataclass(frozen=True)
class Choice:
    pieces: tuple[str, ...]  # one per completion token; joined they are the content
    finish_reason: str


@dataclass(frozen=True)
class Answer:
    """Everything decided about one successful completion, for plain and streamed bodies alike."""

    azure: bool
    completion_id: str
    created: int
    model: str
    system_fingerprint: str | None
    service_tier: str
    choices: tuple[Choice, ...]
    prompt_tokens: int
    include_usage: bool = False
    omit_choices: bool = False  # the missing_fields fault

    @property
    def completion_tokens(self) -> int:
        return sum(len(choice.pieces) for choice in self.choices)


@dataclass(frozen=True)
class Event:
    data: bytes  # "data: ...\n\n"
    delay_s: float  # slept before it is sent
    content: bool  # carries answer text


@dataclass(frozen=True)
class Reply:
    data: bytes  # the whole response, written with one sendall
    delay_s: float = 0.0  # slept before anything is sent
    close: bool = False  # close the connection afterwards (a truncated body)


@dataclass(frozen=True)
class Stream:
    head: bytes  # status line and headers, sent at once
    events: list[Event]
    cut: bool = False  # close after the events, without the last chunk (a truncated stream)


@dataclass(frozen=True)
class Hang:
    seconds: float  # sit on the request, then close; ends early if the client or server quits


@dataclass(frozen=True)
class Reset:
    """Close with TCP RST instead of answering."""


Action = Reply | Stream | Hang | Reset


def _head(answer: Answer, kind: str) -> dict[str, Any]:
    """The fields every completion object and chunk starts with."""
    return {"id": answer.completion_id, "object": kind, "created": answer.created,
            "model": answer.model}


def completion(answer: Answer) -> bytes:
    body = _head(answer, "chat.completion")
    if not answer.omit_choices:
        body["choices"] = [
            {
                "index": index,
                "message": {"role": "assistant", "content": "".join(choice.pieces),
                            "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
            for index, choice in enumerate(answer.choices)
        ]
        if answer.azure:
            for entry in body["choices"]:
                entry["content_filter_results"] = _CHOICE_FILTERS
    body["usage"] = _usage(answer)
    if answer.azure:
        body["prompt_filter_results"] = _PROMPT_FILTERS
        body["system_fingerprint"] = answer.system_fingerprint
        return _compact(body)
    body["service_tier"] = answer.service_tier
    body["system_fingerprint"] = answer.system_fingerprint
    # OpenAI pretty-prints plain bodies (2 spaces) but not stream chunks.
    return json.dumps(body, indent=2, ensure_ascii=False).encode()


def stream_events(answer: Answer, ttft_s: float, per_token_s: float) -> list[Event]:
    """Role chunks, content chunks (choices interleaved), finish chunks, usage, [DONE]."""
    events: list[Event] = []
    if answer.azure:  # Azure's first event carries only the prompt filter results
        events.append(_event({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                              "prompt_filter_results": _PROMPT_FILTERS}, azure=True))
    for index in range(len(answer.choices)):
        delta = {"role": "assistant", "content": "", "refusal": None}
        events.append(_event(_chunk(answer, index, delta, None, filters=False), answer.azure))
    longest = max((len(choice.pieces) for choice in answer.choices), default=0)
    for position in range(longest):
        for index, choice in enumerate(answer.choices):
            if position < len(choice.pieces):
                chunk = _chunk(answer, index, {"content": choice.pieces[position]}, None,
                               filters=True)
                delay_s = per_token_s if position and index == 0 else 0.0
                events.append(_event(chunk, answer.azure, delay_s=delay_s, content=True))
    for index, choice in enumerate(answer.choices):
        chunk = _chunk(answer, index, {}, choice.finish_reason, filters=False)
        events.append(_event(chunk, answer.azure))
    if answer.include_usage:
        usage = _stream_fields(answer) | {"choices": [], "usage": _usage(answer)}
        events.append(_event(usage, answer.azure))
    events.append(Event(b"data: [DONE]\n\n", 0.0, content=False))
    first = events[0]
    events[0] = Event(first.data, ttft_s, first.content)
    return events


def _chunk(answer: Answer, index: int, delta: dict[str, Any], finish_reason: str | None, *,
           filters: bool) -> dict[str, Any]:
    chunk = _stream_fields(answer)
    if not answer.omit_choices:
        choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None,
                                  "finish_reason": finish_reason}
        if answer.azure:
            choice["content_filter_results"] = _CHOICE_FILTERS if filters else {}
        chunk["choices"] = [choice]
    if answer.include_usage:
        chunk["usage"] = None
    return chunk


def _stream_fields(answer: Answer) -> dict[str, Any]:
    fields = _head(answer, "chat.completion.chunk")
    if not answer.azure:
        fields["service_tier"] = answer.service_tier
    fields["system_fingerprint"] = answer.system_fingerprint
    return fields


def _event(payload: dict[str, Any], azure: bool, *, delay_s: float = 0.0,
           content: bool = False) -> Event:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, sort_keys=azure)
    return Event(b"data: " + data.encode() + b"\n\n", delay_s, content)


def _usage(answer: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _compact(body: dict[str, Any]) -> bytes:
    # Azure sends compact JSON with its keys sorted.
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


def openai_error(message: str, type_: str, param: str | None = None,
                 code: str | None = None) -> bytes:
    error = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json.dumps(error, indent=4).encode()  # OpenAI indents its errors by 4, bodies by 2


def azure_error(code: str, message: str) -> bytes:
    return _compact({"error": {"code": code, "message": message}})


def models(names: list[str]) -> bytes:
    data = [
        # A stable, plausible creation time per name.
        {"id": name, "object": "model", "created": 1_680_000_000 + sum(map(ord, name)) * 9973,
         "owned_by": "system"}
        for name in names
    ]
    return json.dumps({"object": "list", "data": data}, indent=2).encode()


def openai_headers(rng: random.Random, now: float, content_type: str, *,
                   processing_ms: int | None = None, budget: Budget | None = None,
                   retry_after_s: int | None = None) -> list[tuple[str, str]]:
    """OpenAI's headers in its order; rate-limit headers when a budget is given."""
    headers = [("date", formatdate(now, usegmt=True)), ("content-type", content_type),
               ("access-control-expose-headers", "X-Request-ID"),
               ("openai-organization", ORGANIZATION)]
    if processing_ms is not None:
        headers.append(("openai-processing-ms", str(processing_ms)))
    headers += [("openai-project", PROJECT), ("openai-version", OPENAI_VERSION)]
    if processing_ms is not None:
        headers.append(("x-envoy-upstream-service-time", str(processing_ms)))
    if retry_after_s is not None:
        headers.append(("retry-after", str(retry_after_s)))
    if budget is not None:
        reset = go_duration(budget.reset_s)
        headers += [
            ("x-ratelimit-limit-requests", str(budget.limit_requests)),
            ("x-ratelimit-limit-tokens", str(budget.limit_tokens)),
            ("x-ratelimit-remaining-requests", str(budget.remaining_requests)),
            ("x-ratelimit-remaining-tokens", str(budget.remaining_tokens)),
            ("x-ratelimit-reset-requests", reset),
            ("x-ratelimit-reset-tokens", reset),
        ]
    expires = time.strftime("%a, %d-%b-%y %H:%M:%S GMT", time.gmtime(now + 1800))
    bm = f"{_random(rng, _COOKIE_CHARS, 43)}-{int(now)}-1.0.1.1-{_random(rng, _COOKIE_CHARS, 86)}"
    cfuvid = f"{_random(rng, _COOKIE_CHARS, 43)}-{int(now * 1000)}-0.0.1.1-604800000"
    cookie_scope = "domain=.api.openai.com; HttpOnly; Secure; SameSite=None"
    headers += [
        ("x-request-id", f"req_{rng.getrandbits(128):032x}"),
        ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
        ("cf-cache-status", "DYNAMIC"),
        ("set-cookie", f"__cf_bm={bm}; path=/; expires={expires}; {cookie_scope}"),
        ("set-cookie", f"_cfuvid={cfuvid}; path=/; {cookie_scope}"),
        ("x-content-type-options", "nosniff"),
        ("server", "cloudflare"),
        ("cf-ray", f"{rng.getrandbits(64):016x}-SJC"),
        ("alt-svc", 'h3=":443"; ma=86400'),
    ]
    return headers


def azure_headers(rng: random.Random, now: float, content_type: str, deployment: str, *,
                  budget: Budget | None = None,
                  retry_after_s: int | None = None) -> list[tuple[str, str]]:
    """Azure OpenAI's headers: only the remaining counts of the rate limits."""
    apim_request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    headers = [("content-type", content_type), ("x-ms-region", AZURE_REGION),
               ("apim-request-id", apim_request_id)]
    if retry_after_s is not None:
        headers += [("retry-after", str(retry_after_s)),
                    ("retry-after-ms", str(retry_after_s * 1000))]
    if budget is not None:
        headers += [("x-ratelimit-remaining-requests", str(budget.remaining_requests)),
                    ("x-ratelimit-remaining-tokens", str(budget.remaining_tokens))]
    headers += [
        ("x-accel-buffering", "no"),
        ("x-ms-rai-invoked", "true"),
        ("x-request-id", str(uuid.UUID(int=rng.getrandbits(128), version=4))),
        ("x-content-type-options", "nosniff"),
        ("azureml-model-session", f"d{rng.randrange(1000, 10000)}-20250306195634"),
        ("x-ms-client-request-id", apim_request_id),
        ("x-ms-deployment-name", deployment),
        ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
        ("date", formatdate(now, usegmt=True)),
    ]
    return headers


def message(status: int, headers: list[tuple[str, str]], body: bytes, *,
            declared_length: int | None = None) -> bytes:
    """A whole HTTP/1.1 response; `declared_length` may promise more than `body` (truncation)."""
    lines = [f"HTTP/1.1 {status} {phrase(status)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    length = len(body) if declared_length is None else declared_length
    lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def phrase(status: int) -> str:
    """The reason phrase; 529 (Anthropic's overloaded_error) has no registered one."""
    return "Overloaded" if status == 529 else HTTPStatus(status).phrase


def stream_head(headers: list[tuple[str, str]]) -> bytes:
    lines = ["HTTP/1.1 200 OK", *(f"{name}: {value}" for name, value in headers),
             "transfer-encoding: chunked"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    """`data` in HTTP/1.1 chunked framing."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def go_duration(seconds: float) -> str:
    """Seconds as Go's time.Duration prints them, to the millisecond: 120ms, 6m0s, 1h2m3.5s."""
    total_ms = max(0, round(seconds * 1000))
    if total_ms < 1000:
        return f"{total_ms}ms" if total_ms else "0s"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole_s, ms = divmod(rest, 1000)
    secs = f"{whole_s}.{ms:03d}".rstrip("0") if ms else str(whole_s)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def completion_id(rng: random.Random) -> str:
    """An id like OpenAI's: "chatcmpl-" and 29 alphanumerics."""
    return "chatcmpl-" + _random(rng, _ALPHANUMERIC, 29)


def _random(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choices(alphabet, k=length))
