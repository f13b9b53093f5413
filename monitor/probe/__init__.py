"""Send one canary, time it, and turn whatever came back into a ProbeResult.

A probe never raises for an upstream failure: timeouts, resets, HTTP errors, bad JSON, truncated
bodies and oversize answers all come back as `ProbeResult(ok=False, error_kind=..., error_detail=...)`
with everything that did arrive. Only a bug in monitor itself raises.

The upstream is not trusted (transport.py): the target's timeout is a deadline for the whole
exchange, max_response_bytes caps the decoded body as it arrives, a redirect is recorded
(unexpected_redirect) and never followed, parsed values are made storable (completion.py), and
every field is scrubbed of the key (scrub.py) before the result leaves this module.

Timings are the probe's own, from just before the request is sent:
- time_to_headers_ms: the status line and headers have arrived;
- total_ms: the last byte of the body has arrived (parsing is not counted);
- time_to_first_token_ms (streams): the first chunk carrying content has arrived;
- output_tokens_per_s (streams): completion tokens over the time after the first token;
  None for a one-token answer (no interval to measure).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions

from monitor.domain import ErrorKind, ProbeResult, Provider, Target
from monitor.probe import anthropic, providers, transport
from monitor.probe import headers as header_parsing
from monitor.probe.checks import Answer, evaluate
from monitor.probe.completion import (
    ID_LIMIT,
    Completion,
    CompletionError,
    StreamAssembler,
    error_message,
    parse_completion,
    storable_text,
)
from monitor.probe.scrub import scrub_result

_DETAIL_LIMIT = 300  # characters of an upstream message kept in error_detail
# Statuses with no IANA phrase that APIs send anyway.
_UNREGISTERED = {529: "Overloaded"}  # Anthropic's overloaded_error


class _Failure(Exception):
    def __init__(self, kind: ErrorKind, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def run(target: Target, session: requests.Session, *,
        now: datetime | None = None) -> ProbeResult:
    """Probe `target` once through `session` (reused across probes, and shared by the targets
    on one upstream: everything of the target's own goes with the request).

    `now` is the probe's stored time (started_at): the daemon passes the moment it took the
    slot at, read from its clock, so the slot, the stored time and the budget day agree (and a
    test's fixed clock reaches the database). Without it the real clock is read just before
    sending. Durations never use it: they come from the monotonic perf_counter."""
    url = providers.chat_url(target)
    request_payload = providers.payload(target)
    secrets = providers.secret_values(target)
    messages_api = target.provider is Provider.ANTHROPIC
    transport.watch(session)
    started_at = now if now is not None else datetime.now(UTC)
    started_ns = time.perf_counter_ns()

    def elapsed_ms() -> float:
        return (time.perf_counter_ns() - started_ns) / 1e6

    fields: dict[str, Any] = {}
    body = bytearray()
    assembler: StreamAssembler | None = None
    failure: _Failure | None = None
    timeout_s = target.timeout_ms / 1000
    deadline = transport.Deadline(timeout_s)
    try:
        with deadline, session.post(
            url,
            json=request_payload,
            headers=providers.request_headers(target),
            auth=providers.key_auth(target),
            stream=True,
            timeout=(timeout_s, timeout_s),
            allow_redirects=False,
        ) as response:
            fields["time_to_headers_ms"] = elapsed_ms()
            fields["http_status"] = response.status_code
            content_type = response.headers.get("content-type", "")
            if target.stream and response.status_code == 200 and "event-stream" in content_type:
                assembler = anthropic.MessageStream() if messages_api else StreamAssembler()
            try:
                _read_body(response, deadline, target, body, assembler, fields, elapsed_ms)
            finally:
                fields["total_ms"] = elapsed_ms()
                # Captured after the clock stops: redaction is our cost, not the upstream's.
                fields["response_headers"] = header_parsing.capture(
                    response.headers.items(), secrets
                )
    except _TRANSPORT_ERRORS as exc:
        if deadline.expired:
            # The watchdog shut the socket: whatever the exception says, time ran out.
            failure = _Failure(*_timed_out(exc, target.timeout_ms))
        else:
            failure = _Failure(*classify_exception(exc, target.timeout_ms))
        if assembler is not None and failure.kind is ErrorKind.TRUNCATED_BODY:
            failure = _Failure(ErrorKind.TRUNCATED_STREAM, failure.detail)
    except transport.UnsupportedEncoding as exc:
        failure = _Failure(ErrorKind.UNEXPECTED_CONTENT_TYPE, str(exc))
    except zlib.error:
        encoding = fields.get("response_headers", {}).get("content-encoding", "")
        failure = _Failure(
            ErrorKind.INVALID_RESPONSE, f"Response body could not be decompressed ({encoding})"
        )
    except _Failure as exc:
        failure = exc

    completion: Completion | None = None
    if failure is None:
        try:
            parse = anthropic.parse_message if messages_api else parse_completion
            completion = _interpret(fields, bytes(body), assembler, target.stream, url, parse)
        except _Failure as exc:
            failure = exc
    if assembler is not None and completion is None and assembler.chunks:
        # Keep what a broken stream did deliver: it is evidence.
        completion = assembler.partial()

    headers = fields.get("response_headers", {})
    if completion is not None:
        fields.update(_completion_fields(completion, fields))
    result = ProbeResult(
        uid=uuid.uuid4().hex,
        target_name=target.name,
        config_hash=target.config_hash,
        started_at=started_at,
        stream=target.stream,
        request_url=url,
        request_payload=request_payload,
        ok=failure is None,
        error_kind=failure.kind if failure else None,
        error_detail=storable_text(failure.detail) if failure else None,
        retry_after_s=header_parsing.retry_after_s(headers),
        **(anthropic.header_fields(headers) if messages_api
           else header_parsing.openai_fields(headers)),
        raw_response=bytes(body[: target.max_response_bytes]),
        **fields,
    )
    # A server that echoes the key back must not get it into the database, a log or a report.
    scrubbed = scrub_result(result, secrets)
    if not target.checks:
        return scrubbed
    # Judged on the scrubbed answer: a reason quoting it cannot carry the key either.
    return replace(scrubbed, checks=evaluate(target.checks, Answer.of(scrubbed)))


_TRANSPORT_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


def _read_body(
    response: requests.Response,
    deadline: transport.Deadline,
    target: Target,
    body: bytearray,
    assembler: StreamAssembler | None,
    fields: dict[str, Any],
    elapsed_ms: Callable[[], float],
) -> None:
    """Read the decoded body into `body` as it arrives, within the cap and the deadline."""
    cap = target.max_response_bytes
    for piece in transport.read_pieces(response, deadline, transport.READ_SIZE):
        body += piece
        if len(body) > cap:
            raise _Failure(
                ErrorKind.BODY_TOO_LARGE, f"Response body exceeded the {cap}-byte cap"
            )
        if assembler is not None:
            _feed(assembler, piece, fields, elapsed_ms)
    if deadline.expired:
        raise _Failure(
            ErrorKind.READ_TIMEOUT, f"Response not complete after {target.timeout_ms} ms"
        )


def _timed_out(exc: BaseException, timeout_ms: int) -> tuple[ErrorKind, str]:
    if isinstance(exc, requests.ConnectTimeout):
        return ErrorKind.CONNECT_TIMEOUT, f"Connection timed out after {timeout_ms} ms"
    return ErrorKind.READ_TIMEOUT, f"Response not complete after {timeout_ms} ms"


def _feed(
    assembler: StreamAssembler,
    piece: bytes,
    fields: dict[str, Any],
    elapsed_ms: Callable[[], float],
) -> None:
    had_content = assembler.saw_content
    try:
        assembler.feed(piece)
    except CompletionError as exc:
        raise _Failure(exc.kind, exc.detail) from None
    if assembler.saw_content and not had_content:
        fields["time_to_first_token_ms"] = elapsed_ms()


def _interpret(
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
        raise _Failure(*_http_failure(status, headers, body, url))
    try:
        if assembler is not None:
            return assembler.finish()
        if "json" not in content_type.lower():
            shown = content_type or "no content type"
            expected = "text/event-stream or application/json" if stream else "application/json"
            raise _Failure(
                ErrorKind.UNEXPECTED_CONTENT_TYPE,
                f"Expected {expected}, got {shown} ({len(body)} bytes)",
            )
        # A server that ignores `stream: true` and answers plain JSON is still answering.
        return parse(body)
    except CompletionError as exc:
        raise _Failure(exc.kind, exc.detail) from None


def _completion_fields(completion: Completion, fields: dict[str, Any]) -> dict[str, Any]:
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


def _http_failure(
    status: int, headers: dict[str, str], body: bytes, url: str
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


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (urllib3 puts causes in args) and its chain, outermost first."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        pending.extend(a for a in current.args if isinstance(a, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return seen


def classify_exception(exc: BaseException, timeout_ms: int) -> tuple[ErrorKind, str]:
    """Map a requests exception to an ErrorKind and a sentence, most specific cause first."""
    causes = _causes(exc)

    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(c, types) for c in causes)

    if isinstance(exc, requests.ConnectTimeout):
        return ErrorKind.CONNECT_TIMEOUT, f"Connection timed out after {timeout_ms} ms"
    if isinstance(exc, requests.ReadTimeout) or has(
        urllib3.exceptions.ReadTimeoutError, socket.timeout, TimeoutError
    ):
        return ErrorKind.READ_TIMEOUT, f"Read timed out after {timeout_ms} ms"
    if has(ConnectionRefusedError):
        return ErrorKind.CONNECTION_REFUSED, "Connection refused"
    if has(ConnectionResetError, BrokenPipeError):
        return ErrorKind.CONNECTION_RESET, "Connection reset by the server"
    # A bare urllib3 ProtocolError comes from reading the body (requests wraps the ones
    # raised before the headers arrive in ConnectionError).
    if has(urllib3.exceptions.IncompleteRead, http.client.IncompleteRead) or isinstance(
        exc, requests.exceptions.ChunkedEncodingError | urllib3.exceptions.ProtocolError
    ):
        return ErrorKind.TRUNCATED_BODY, "Response body ended before it was complete"
    if has(urllib3.exceptions.NameResolutionError, socket.gaierror):
        return ErrorKind.CONNECTION_ERROR, "Could not resolve the host name"
    if isinstance(exc, requests.exceptions.SSLError | urllib3.exceptions.SSLError):
        return ErrorKind.CONNECTION_ERROR, "TLS handshake failed"
    if isinstance(exc, requests.ConnectionError | urllib3.exceptions.HTTPError):
        closed = has(urllib3.exceptions.ProtocolError, http.client.RemoteDisconnected)
        if closed:
            return ErrorKind.CONNECTION_RESET, "Server closed the connection without a response"
        return ErrorKind.CONNECTION_ERROR, f"Connection failed ({type(exc).__name__})"
    return ErrorKind.CONNECTION_ERROR, f"Request failed ({type(exc).__name__})"
