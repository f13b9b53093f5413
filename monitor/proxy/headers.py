"""Which headers cross the proxy, which stay behind, and what the recording side may see.

End-to-end headers go through as they are, in their order and spelling; hop-by-hop ones
(RFC 9110 section 7.6.1, and any the Connection header names) belong to one connection and are
dropped. The app's credentials are forwarded but never kept: the recording side gets a sha256
of the key instead, the same whichever header carried it. Our own token header is never
forwarded and never kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

TOKEN_HEADER = "x-monitor-proxy-token"
CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# Not hop-by-hop, but the proxy sets them itself: Host is the upstream's, the body is framed
# anew (Content-Length of the body as read), and an Expect was already answered to the app.
_REQUEST_REWRITTEN = frozenset({"host", "content-length", "expect"})


def _dropped(pairs: list[tuple[str, str]]) -> frozenset[str]:
    """Hop-by-hop names, plus those the Connection header lists for this hop."""
    named = {token.strip().lower() for name, value in pairs if name.lower() == "connection"
             for token in value.split(",")}
    return HOP_BY_HOP | named


def credential_hash(value: str) -> str:
    """sha256 hex of the key: "Bearer sk-..." and a bare "sk-..." hash alike, so one key
    reads the same whether it came as Authorization, api-key or x-api-key."""
    scheme, _, rest = value.strip().partition(" ")
    key = rest.strip() if scheme.lower() == "bearer" and rest else value.strip()
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class RequestHeaders:
    """The app's headers split three ways: `forward` (to the upstream, Host rewritten),
    `recorded` (lower-cased, without credentials or our token) and the credential's hash."""

    __slots__ = ("credential_hash", "forward", "recorded", "token")

    def __init__(self, items: Iterable[tuple[str, str]], host: str, body_length: int | None):
        pairs = list(items)
        dropped = _dropped(pairs) | _REQUEST_REWRITTEN
        forward: list[tuple[str, str]] = [("Host", host)]
        recorded: dict[str, str] = {}
        credential: str | None = None
        token: str | None = None
        for name, value in pairs:
            lower = name.lower()
            if lower == TOKEN_HEADER:
                token = value
                continue
            if lower in dropped:
                continue
            forward.append((name, value))
            if lower in CREDENTIAL_HEADERS:
                credential = credential or value
                continue
            recorded[lower] = f"{recorded[lower]}, {value}" if lower in recorded else value
        if body_length is not None:
            forward.append(("Content-Length", str(body_length)))
        self.forward = forward
        self.recorded = recorded
        self.credential_hash = credential_hash(credential) if credential is not None else None
        self.token = token


def response_headers(items: list[tuple[str, str]]) -> tuple[list[tuple[str, str]],
                                                            dict[str, str]]:
    """The upstream's headers: those passed to the app (hop-by-hop aside, order and spelling
    kept), and all of them as received with names lower-cased, for the recording side."""
    dropped = _dropped(items)
    forward = [(name, value) for name, value in items if name.lower() not in dropped]
    recorded: dict[str, str] = {}
    for name, value in items:
        lower = name.lower()
        recorded[lower] = f"{recorded[lower]}, {value}" if lower in recorded else value
    return forward, recorded


def head(status: int, reason: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A response's status line and headers, ready to send."""
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1", "replace")


def error_reply(status: int, reason: str, message: str, code: str, *,
                close: bool = False) -> bytes:
    """An answer of the proxy's own, in OpenAI's error shape, which every OpenAI-compatible
    SDK reads (Anthropic's SDKs show the message as well)."""
    body = json.dumps({"error": {"message": message, "type": "proxy_error", "param": None,
                                 "code": code}}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))
    return head(status, reason, headers) + body
