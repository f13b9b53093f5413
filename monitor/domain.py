"""Plain data that crosses layers: targets, probe results and the enums stored with them.

Everything here is immutable and imports nothing from `monitor`, so any layer may depend on it
without dragging in HTTP, the database or the clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.secrets import Secret


class Provider(enum.StrEnum):
    OPENAI = "openai"
    AZURE = "azure"
    OPENAI_COMPATIBLE = "openai-compatible"


class ErrorKind(enum.StrEnum):
    """Why a probe failed. Stored as-is, so values never change once released."""

    CONNECT_TIMEOUT = "connect_timeout"
    READ_TIMEOUT = "read_timeout"
    CONNECTION_REFUSED = "connection_refused"
    CONNECTION_RESET = "connection_reset"
    CONNECTION_ERROR = "connection_error"  # DNS, TLS, proxy: the transport failed otherwise
    RATE_LIMITED = "rate_limited"  # HTTP 429
    AUTH_ERROR = "auth_error"  # HTTP 401/403
    HTTP_CLIENT_ERROR = "http_client_error"  # any other 4xx
    HTTP_SERVER_ERROR = "http_server_error"  # 5xx
    UNEXPECTED_STATUS = "unexpected_status"  # 1xx/3xx or a 2xx other than 200
    UNEXPECTED_CONTENT_TYPE = "unexpected_content_type"
    INVALID_JSON = "invalid_json"
    TRUNCATED_BODY = "truncated_body"
    TRUNCATED_STREAM = "truncated_stream"
    BODY_TOO_LARGE = "body_too_large"
    INVALID_RESPONSE = "invalid_response"  # valid JSON without the fields a completion must have


class SlotState(enum.StrEnum):
    """What became of one scheduled slot of one target."""

    CLAIMED = "claimed"  # an instance took it and is probing
    PROBED = "probed"
    SKIPPED = "skipped"  # not probed on purpose (rate limited, budget spent); see reason


@dataclass(frozen=True)
class Target:
    """One model endpoint to probe, with every default already merged in."""

    name: str
    provider: Provider
    base_url: str
    model: str | None
    messages: tuple[dict[str, Any], ...]
    params: dict[str, Any]
    stream: bool
    timeout_ms: int
    interval_ms: int
    max_response_bytes: int
    api_key_env: str | None = None
    api_key: Secret | None = None
    deployment: str | None = None  # Azure only
    api_version: str | None = None  # Azure only
    # Probing stops for the rest of the UTC day once either is spent (None: no limit).
    daily_token_budget: int | None = None
    daily_request_budget: int | None = None
    # sha256 of the effective config without the key: a change shows up as a new hash in history.
    config_hash: str = ""


@dataclass(frozen=True)
class Settings:
    config_path: str
    database_url: str
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class RateLimits:
    """The six x-ratelimit-* headers as numbers; None where the server did not send one."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


@dataclass(frozen=True)
class Choice:
    index: int
    finish_reason: str | None
    content: str | None
    refusal: str | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    prompt_audio_tokens: int | None = None
    reasoning_tokens: int | None = None
    completion_audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


@dataclass(frozen=True)
class ProbeResult:
    """Everything one canary call produced. Built by probe.run; never holds a secret."""

    uid: str  # stable unique id (hex uuid4): lets a spooled result be written exactly once
    target_name: str
    config_hash: str
    started_at: datetime  # aware UTC
    stream: bool
    request_url: str
    request_payload: dict[str, Any]
    ok: bool
    error_kind: ErrorKind | None = None
    error_detail: str | None = None
    http_status: int | None = None
    # Timings measured by the probe itself.
    time_to_headers_ms: float | None = None
    total_ms: float | None = None
    time_to_first_token_ms: float | None = None
    output_tokens_per_s: float | None = None
    # Headers (already redacted) and the values parsed out of them.
    response_headers: dict[str, str] = field(default_factory=dict)
    openai_processing_ms: float | None = None
    openai_version: str | None = None
    openai_organization: str | None = None
    x_request_id: str | None = None
    retry_after_s: float | None = None
    rate_limits: RateLimits = RateLimits()
    # Body fields.
    response_id: str | None = None
    response_created: int | None = None  # the body's unix `created`, as sent
    model: str | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None
    choices: tuple[Choice, ...] = ()
    usage: Usage = Usage()
    stream_chunks: int | None = None
    # The body exactly as received (for a stream, the raw SSE bytes); capped at max_response_bytes.
    raw_response: bytes = b""

    @property
    def content(self) -> str | None:
        """The first choice's text, the canary's answer."""
        return self.choices[0].content if self.choices else None

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None
