"""One forwarded call (an Exchange) -> the ProbeResult that stores it, parsed like a probe.

Chat Completions (POST .../chat/completions, plain or streamed) and, on Anthropic routes, the
Messages API (POST .../v1/messages) are read by the probe's own parser (probe/answer.py): model,
fingerprint, usage, choices, rate limits and classified errors land in the same columns as a
canary's. Any other call (embeddings, models, files, ...) is stored raw: status, headers, both
bodies and timings, with `request_path` saying what was called, and only its status judged.

A call is stored as a probe of the traffic target "{route}/{requested model}" (the model the
app asked for; "-" when it named none), so the per-target detectors, history and rollups work
per route and model without ever mixing with a canary's.

Fields and how they differ from a canary's:
- time_to_headers_ms, total_ms: the upstream's, as the proxy measured them; for a stream,
  time_to_first_token_ms is the time to the stream's first byte (the proxy does not parse
  as it relays), so output_tokens_per_s is measured from there.
- response headers are captured like a probe's (lower-cased, credentials redacted by name);
  the body is stored as the app received it, gzip or deflate undone.
- the request body is stored as its JSON object, deduplicated like a canary's payload; a body
  that is not a JSON object, or was cut at the size cap, as {"body_base64": ...}.
- `headers` routes store no body: no raw answer, no choices, and of the request only its
  model and whether it asked for a stream. Usage, model and fingerprint are still kept.
- a body cut at the route's cap is flagged (request_truncated, response_truncated); an
  answer that fails to parse only because it was cut is not counted as a failure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
import zlib
from typing import Any
from urllib.parse import unquote, urlsplit

from monitor.domain import ErrorKind, ProbeResult, Provider
from monitor.probe import answer
from monitor.probe import headers as header_parsing
from monitor.probe.completion import storable_text
from monitor.proxy.exchange import Exchange, RecordMode, Route

NAME_LIMIT = 200  # targets.name
NO_MODEL = "-"
# Failures that only say the stored copy was cut short, not that the app's call failed.
_CUT = {ErrorKind.INVALID_JSON, ErrorKind.TRUNCATED_STREAM, ErrorKind.TRUNCATED_BODY,
        ErrorKind.INVALID_RESPONSE}
_AZURE_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")


def route_config(route: Route) -> dict[str, Any]:
    """What a traffic target's configuration row records: the route, never a credential."""
    return {"route": route.name, "provider": route.provider.value, "upstream": route.upstream,
            "record": route.record, "max_body_bytes": route.max_body_bytes}


def config_hash(route: Route) -> str:
    text = json.dumps(route_config(route), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def parsed_endpoint(provider: Provider, method: str, path: str) -> bool:
    """Whether the call is one monitor parses like a probe (else it is stored raw)."""
    if method.upper() != "POST":
        return False
    bare = urlsplit(path).path.rstrip("/")
    if provider is Provider.ANTHROPIC:
        return bare.endswith("/v1/messages")
    return bare.endswith("/chat/completions")


def request_document(body: bytes, truncated: bool) -> dict[str, Any] | None:
    """The request body as a JSON object, or None when it is not one (or was cut)."""
    if truncated or not body:
        return None
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def requested_model(exchange: Exchange, document: dict[str, Any] | None) -> str | None:
    """The model the app asked for: the body's `model`, else an Azure deployment's name."""
    model = document.get("model") if document is not None else None
    if isinstance(model, str) and model:
        return model
    found = _AZURE_DEPLOYMENT.search(urlsplit(exchange.path).path + "/")
    return unquote(found.group(1)) if found else None


def target_name(route: str, model: str | None) -> str:
    """"route/model", storable and within targets.name's length."""
    return storable_text(f"{route}/{model or NO_MODEL}", NAME_LIMIT)


def to_result(exchange: Exchange, mode: str = RecordMode.ALL) -> ProbeResult:
    """The ProbeResult that stores `exchange` (see the module docstring)."""
    document = request_document(exchange.request_body, exchange.request_truncated)
    model = requested_model(exchange, document)
    keep_bodies = mode != RecordMode.HEADERS
    headers = header_parsing.capture(exchange.response_headers.items())
    body, decode_error = _decoded(exchange.response_body, headers)
    parsed = parsed_endpoint(exchange.provider, exchange.method, exchange.path)
    stream = exchange.streamed or (document is not None and document.get("stream") is True)
    fields: dict[str, Any] = {"response_headers": headers}
    failure: tuple[ErrorKind, str] | None = None
    if exchange.status is None:
        failure = transport_failure(exchange.error)
    else:
        fields["http_status"] = exchange.status
        fields.update(answer.header_fields(exchange.provider, headers))
        if decode_error is not None and not exchange.response_truncated:
            failure = (ErrorKind.INVALID_RESPONSE, decode_error)
        elif parsed:
            reading = answer.read_answer(
                exchange.provider, stream, exchange.status, headers, body,
                exchange.upstream_url,
                first_token_ms=exchange.time_to_first_byte_ms if exchange.streamed else None,
                total_ms=exchange.upstream_total_ms)
            fields.update(reading.fields)
            if reading.failure is not None and not (
                    exchange.response_truncated and reading.failure.kind in _CUT):
                failure = (reading.failure.kind, reading.failure.detail)
        elif not 200 <= exchange.status < 300:
            failure = answer.http_failure(exchange.status, headers, body, exchange.upstream_url)
        if failure is None and exchange.error is not None:
            # The answer began, then the connection failed: what arrived is kept.
            failure = (ErrorKind.TRUNCATED_STREAM if exchange.streamed
                       else ErrorKind.TRUNCATED_BODY, storable_text(exchange.error))
    if not keep_bodies:
        fields["choices"] = ()
    fields["time_to_headers_ms"] = exchange.time_to_headers_ms
    fields["total_ms"] = exchange.upstream_total_ms
    return ProbeResult(
        uid=uuid.uuid4().hex,
        target_name=target_name(exchange.route, model),
        config_hash="",  # set by the recorder, which knows the route
        started_at=exchange.started_at,
        stream=stream,
        request_url=exchange.upstream_url,
        request_payload=_payload(exchange, document, model, stream, keep_bodies),
        ok=failure is None,
        error_kind=failure[0] if failure else None,
        error_detail=storable_text(failure[1]) if failure else None,
        raw_response=body if keep_bodies else b"",
        traffic=True,
        credential_hash=exchange.credential_hash,
        request_path=None if parsed else storable_text(exchange.path),
        proxy_added_ms=exchange.proxy_added_ms,
        request_truncated=exchange.request_truncated,
        response_truncated=exchange.response_truncated,
        **fields,
    )


def transport_failure(error: str | None) -> tuple[ErrorKind, str]:
    """The ErrorKind of the forwarder's sentence for a call that got no answer."""
    detail = storable_text(error or "No answer from the upstream")
    lowered = detail.lower()
    if "timed out" in lowered or "timeout" in lowered:
        connect = "connect" in lowered
        return (ErrorKind.CONNECT_TIMEOUT if connect else ErrorKind.READ_TIMEOUT), detail
    if "refused" in lowered:
        return ErrorKind.CONNECTION_REFUSED, detail
    if "reset" in lowered or "closed" in lowered:
        return ErrorKind.CONNECTION_RESET, detail
    return ErrorKind.CONNECTION_ERROR, detail


def _payload(exchange: Exchange, document: dict[str, Any] | None, model: str | None,
             stream: bool, keep_bodies: bool) -> dict[str, Any]:
    if not keep_bodies:
        return {k: v for k, v in (("model", model), ("stream", stream or None)) if v}
    if document is not None:
        return document
    if not exchange.request_body:
        return {}
    return {"body_base64": base64.b64encode(exchange.request_body).decode("ascii")}


def _decoded(body: bytes, headers: dict[str, str]) -> tuple[bytes, str | None]:
    """The body with gzip or deflate undone (what the app's client reads), and why it could
    not be, if it could not (then the body as received)."""
    encoding = headers.get("content-encoding", "").strip().lower()
    if not body or encoding in ("", "identity"):
        return body, None
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return body, None  # br, zstd: stored as received, parsed as is
    try:
        # 47: a gzip or zlib header, whichever it is; -15 below: a raw deflate stream.
        return zlib.decompressobj(47).decompress(body), None
    except zlib.error:
        try:
            return zlib.decompressobj(-15).decompress(body), None
        except zlib.error:
            return body, f"Response body could not be decompressed ({encoding})"
