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
import socket
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import requests
import urllib3.exceptions

from monitor.domain import ErrorKind, ProbeResult, Target
from monitor.probe import answer, providers, transport
from monitor.probe import headers as header_parsing
from monitor.probe.answer import Failure
from monitor.probe.checks import Answer, evaluate
from monitor.probe.completion import Completion, StreamAssembler, storable_text
from monitor.probe.scrub import scrub_result


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
    transport.watch(session)
    started_at = now if now is not None else datetime.now(UTC)
    started_ns = time.perf_counter_ns()

    def elapsed_ms() -> float:
        return (time.perf_counter_ns() - started_ns) / 1e6

    fields: dict[str, Any] = {}
    body = bytearray()
    assembler: StreamAssembler | None = None
    failure: Failure | None = None
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
            assembler = answer.assembler_for(target.provider, target.stream,
                                             response.status_code,
                                             response.headers.get("content-type", ""))
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
            failure = Failure(*_timed_out(exc, target.timeout_ms))
        else:
            failure = Failure(*classify_exception(exc, target.timeout_ms))
        if assembler is not None and failure.kind is ErrorKind.TRUNCATED_BODY:
            failure = Failure(ErrorKind.TRUNCATED_STREAM, failure.detail)
    except transport.UnsupportedEncoding as exc:
        failure = Failure(ErrorKind.UNEXPECTED_CONTENT_TYPE, str(exc))
    except zlib.error:
        encoding = fields.get("response_headers", {}).get("content-encoding", "")
        failure = Failure(
            ErrorKind.INVALID_RESPONSE, f"Response body could not be decompressed ({encoding})"
        )
    except Failure as exc:
        failure = exc

    completion: Completion | None = None
    if failure is None:
        try:
            completion = answer.interpret(fields, bytes(body), assembler, target.stream, url,
                                          answer.parser_for(target.provider))
        except Failure as exc:
            failure = exc
    if assembler is not None and completion is None and assembler.chunks:
        # Keep what a broken stream did deliver: it is evidence.
        completion = assembler.partial()

    headers = fields.get("response_headers", {})
    if completion is not None:
        fields.update(answer.completion_fields(completion, fields))
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
        **answer.header_fields(target.provider, headers),
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
            raise Failure(
                ErrorKind.BODY_TOO_LARGE, f"Response body exceeded the {cap}-byte cap"
            )
        if assembler is not None:
            _feed(assembler, piece, fields, elapsed_ms)
    if deadline.expired:
        raise Failure(
            ErrorKind.READ_TIMEOUT, f"Response not complete after {target.timeout_ms} ms"
        )


def _feed(
    assembler: StreamAssembler,
    piece: bytes,
    fields: dict[str, Any],
    elapsed_ms: Callable[[], float],
) -> None:
    had_content = assembler.saw_content
    answer.feed(assembler, piece)
    if assembler.saw_content and not had_content:
        fields["time_to_first_token_ms"] = elapsed_ms()


def _timed_out(exc: BaseException, timeout_ms: int) -> tuple[ErrorKind, str]:
    if isinstance(exc, requests.ConnectTimeout):
        return ErrorKind.CONNECT_TIMEOUT, f"Connection timed out after {timeout_ms} ms"
    return ErrorKind.READ_TIMEOUT, f"Response not complete after {timeout_ms} ms"


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
