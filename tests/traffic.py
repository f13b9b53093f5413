"""Exchanges as `monitor proxy`'s forwarder builds them, from real HTTP calls to the simulator:
the request is sent as the app sent it, the answer's bytes and headers are read as they
arrived (nothing decoded), and the times are measured around the call."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

import requests

from monitor.domain import Provider
from monitor.proxy.exchange import Exchange, Route

CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key")


def call(route: Route, method: str, path: str, body: dict[str, Any] | bytes | None = None, *,
         key: str | None = None, max_body_bytes: int | None = None,
         upstream: str | None = None, headers: dict[str, str] | None = None) -> Exchange:
    """Send one call to the route's upstream (or `upstream`) and return its Exchange."""
    cap = max_body_bytes if max_body_bytes is not None else route.max_body_bytes
    data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    headers = {**({"content-type": "application/json"} if data else {}), **(headers or {})}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    url = (upstream or route.upstream) + path
    started_at = datetime.now(UTC)
    started = time.perf_counter()

    def since_ms() -> float:
        return (time.perf_counter() - started) * 1000

    status: int | None = None
    received: dict[str, str] = {}
    answer = bytearray()
    streamed = False
    to_headers = to_first = total = None
    error = None
    try:
        with requests.request(method, url, data=data or None, headers=headers, stream=True,
                              timeout=10) as response:
            to_headers = since_ms()
            status = response.status_code
            received = {k.lower(): v for k, v in response.headers.items()}
            streamed = "event-stream" in received.get("content-type", "")
            for piece in response.raw.stream(8192, decode_content=False):
                if to_first is None:
                    to_first = since_ms()
                answer += piece
            total = since_ms()
    except requests.RequestException as exc:
        error = str(exc)  # the forwarder's sentence: what the HTTP library said
        total = since_ms()
    return Exchange(
        route=route.name, provider=route.provider, method=method, path=path,
        upstream_url=url, started_at=started_at,
        request_headers={k: v for k, v in headers.items() if k not in CREDENTIAL_HEADERS},
        request_body=data[:cap], request_truncated=len(data) > cap,
        credential_hash=hashlib.sha256(key.encode()).hexdigest() if key else None,
        status=status, response_headers=received, response_body=bytes(answer[:cap]),
        response_truncated=len(answer) > cap, streamed=streamed,
        time_to_headers_ms=to_headers, time_to_first_byte_ms=to_first,
        upstream_total_ms=total, proxy_added_ms=0.25, error=error)


def chat(route: Route, model: str = "gpt-4o", *, stream: bool = False, key: str | None = None,
         content: str = "Say OK", **params: Any) -> Exchange:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}],
                            **params}
    if stream:
        body["stream"] = True
    return call(route, "POST", "/v1/chat/completions", body, key=key)


def openai_route(sim_url: str, name: str = "openai", record: str = "all",
                 sample_rate: float = 1.0, max_body_bytes: int = 1_048_576) -> Route:
    return Route(name=name, provider=Provider.OPENAI, upstream=sim_url, record=record,
                 sample_rate=sample_rate, max_body_bytes=max_body_bytes)
