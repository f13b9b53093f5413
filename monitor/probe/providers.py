"""What to send to each kind of provider: the URL, the auth header and the JSON payload.

This is the only module that reads a Secret's value, and only to put it in a request header.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import requests
import requests.auth
import requests.cookies

from monitor import __version__
from monitor.domain import Provider, Target
from monitor.probe import transport

USER_AGENT = f"monitor/{__version__} (LLM API canary)"


def chat_url(target: Target) -> str:
    """The Chat Completions (or Anthropic Messages) URL; never contains a credential."""
    if target.provider is Provider.ANTHROPIC:
        return f"{target.base_url}/v1/messages"
    if target.provider is Provider.AZURE:
        deployment = quote(target.deployment or "", safe="")
        query = urlencode({"api-version": target.api_version or ""})
        return f"{target.base_url}/openai/deployments/{deployment}/chat/completions?{query}"
    return f"{target.base_url}/chat/completions"


def payload(target: Target) -> dict[str, Any]:
    """The JSON body, in a stable key order so identical canaries hash identically."""
    if target.provider is Provider.ANTHROPIC:
        return _messages_payload(target)
    body: dict[str, Any] = {}
    if target.model is not None:
        body["model"] = target.model
    body["messages"] = [dict(message) for message in target.messages]
    body.update(target.params)
    if target.stream:
        body["stream"] = True
        # Without this OpenAI sends no usage in a stream, and tokens/s could not be measured.
        body["stream_options"] = {"include_usage": True}
    return body


def _messages_payload(target: Target) -> dict[str, Any]:
    """Anthropic's body: leading system messages become the top-level `system` (the Messages
    API has no system role); params (max_tokens, the cap, among them) go as they are."""
    body: dict[str, Any] = {"model": target.model}
    messages = [dict(message) for message in target.messages]
    system = []
    while messages and messages[0]["role"] == "system":
        system.append(messages.pop(0)["content"])
    if system:
        body["system"] = "\n\n".join(system)
    body["messages"] = messages
    body.update(target.params)
    if target.stream:
        body["stream"] = True  # usage comes in message_start and message_delta unasked
    return body


def upstream(target: Target) -> tuple[str, str, int]:
    """(scheme, host, port) the target's requests go to: targets with the same one share a
    session and its connections (see `new_session`)."""
    url = urlsplit(chat_url(target))
    return url.scheme, url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def request_headers(target: Target) -> dict[str, str]:
    """The headers that depend on the target, sent with each request (never kept in a session,
    which other targets share)."""
    headers = {"Accept": "text/event-stream" if target.stream else "application/json"}
    if target.provider is Provider.ANTHROPIC and target.api_version is not None:
        headers["anthropic-version"] = target.api_version
    return headers


def key_auth(target: Target) -> requests.auth.AuthBase:
    """The target's key as a request's `auth`: set on the request at send time, never on the
    shared session."""
    return _KeyAuth(target)


class _KeyAuth(requests.auth.AuthBase):
    """Adds the key header at send time. Being the request's `auth` also stops requests from
    replacing our header with credentials from ~/.netrc."""

    def __init__(self, target: Target) -> None:
        self._target = target

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        key = self._target.api_key
        if key is not None:
            if self._target.provider is Provider.AZURE:
                request.headers["api-key"] = key.value
            elif self._target.provider is Provider.ANTHROPIC:
                request.headers["x-api-key"] = key.value
            else:
                request.headers["Authorization"] = f"Bearer {key.value}"
        return request

    def __repr__(self) -> str:
        return "<_KeyAuth ****>"


def secret_values(target: Target) -> list[str]:
    """The strings that must never be stored: the probe scrubs them from anything it keeps."""
    return [target.api_key.value] if target.api_key is not None else []


class _NoCookies(requests.cookies.RequestsCookieJar):
    """Every probe is a first visit: a cookie sent back (Cloudflare's __cf_bm, a load
    balancer's affinity cookie) could pin the canary to one backend and hide a change."""

    def extract_cookies(self, response: object, request: object) -> None:
        pass

    def set_cookie(self, cookie: object, *args: object, **kwargs: object) -> None:
        pass


def new_session() -> requests.Session:
    """A session whose connections are reused from one probe to the next, by every target on
    one upstream: it holds nothing of any target (the key and the Accept header go with each
    request, see `key_auth` and `request_headers`) and keeps no cookies. It never follows a
    redirect (transport.ProbeSession): the key goes to the configured host only."""
    session = transport.ProbeSession()
    session.headers.update(
        {
            "User-Agent": USER_AGENT,
            # Only what transport.Decoder undoes, with a bound on each step (no brotli, zstd).
            "Accept-Encoding": transport.SUPPORTED_ENCODINGS,
        }
    )
    session.cookies = _NoCookies()
    return session
