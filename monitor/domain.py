"""Plain data that crosses layers: targets, probe results and the enums stored with them.

Everything here is immutable and imports nothing from `monitor`, so any layer may depend on it
without dragging in HTTP, the database or the clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.alerting import AlertSettings
from monitor.secrets import Secret


class Provider(enum.StrEnum):
    OPENAI = "openai"
    AZURE = "azure"
    OPENAI_COMPATIBLE = "openai-compatible"
    ANTHROPIC = "anthropic"  # the Messages API (probe/anthropic.py)


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
    UNEXPECTED_REDIRECT = "unexpected_redirect"  # a 3xx with a Location: never followed


class AlertState(enum.StrEnum):
    """Where an alert stands (alerts/lifecycle.py draws the moves). Stored as-is."""
    PENDING = "pending"  # its condition holds, not yet for open_after probes: nobody told
    OPEN = "open"
    RESOLVED = "resolved"


class AlertChange(enum.StrEnum):
    """What an outbox row tells people about an alert. Stored as-is."""
    OPENED = "opened"
    RESOLVED = "resolved"
    REMINDER = "reminder"  # still open, unacknowledged, remind_every after the last word


class OutboxState(enum.StrEnum):
    """Where one outbox row stands on its way into a notification. Stored as-is."""
    PENDING = "pending"  # to be grouped into the next notification
    HELD = "held"  # in a maintenance window: decided when the window ends
    GROUPED = "grouped"  # part of a notification (notification_id)
    DROPPED = "dropped"  # no longer true by the time it could be sent


class ReplayState(enum.StrEnum):
    """Where one item of a batch replay stands. Stored as-is."""
    PENDING = "pending"
    SENDING = "sending"  # claimed: its request may be on the wire
    DONE = "done"


class SlotState(enum.StrEnum):
    """What became of one scheduled slot of one target. Stored as-is."""

    CLAIMED = "claimed"  # an instance took it and is probing
    PROBED = "probed"
    SKIPPED = "skipped"  # its time came and it was not probed; see reason_kind and reason
    # Not yet come, inside a 429 backoff: kept from every instance, and recorded as skipped
    # by whichever instance's schedule reaches it (never counted before then).
    RESERVED = "reserved"


class SkipKind(enum.StrEnum):
    """Why a slot was skipped, for counting (the slot's `reason` says it in words). Stored
    as-is, so values never change once released."""

    RATE_LIMITED = "rate_limited"  # backing off after a 429
    BUDGET_SPENT = "budget_spent"  # the target's daily request or token budget
    MISSED = "missed"  # the scheduler could not run it (late, or the last probe still running)


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
    api_version: str | None = None  # Azure's api-version; Anthropic's anthropic-version
    # Probing stops for the rest of the UTC day once either is spent (None: no limit).
    daily_token_budget: int | None = None
    daily_request_budget: int | None = None
    detection: DetectionThresholds = field(default_factory=lambda: DetectionThresholds())
    checks: tuple[Check, ...] = ()  # on each answer (not in config_hash: nothing sent changes)
    # sha256 of the effective config without the key: a change shows up as a new hash in history.
    config_hash: str = ""
    # A target of recorded traffic (monitor proxy: one per route and requested model), never
    # probed: only the detectors that judge the upstream (detect.TRAFFIC_KINDS) run on it.
    traffic: bool = False


@dataclass(frozen=True)
class Settings:
    config_path: str
    database_url: str
    targets: tuple[Target, ...]
    # [retention] raw (default: defaults.RAW_RETENTION_MS): raw bodies and headers older than
    # this are pruned daily and by `monitor prune`; rollups and parsed columns stay forever.
    raw_retention_ms: int
    alerts: AlertSettings = field(default_factory=lambda: AlertSettings())
    # [web] allowed_hosts: Host names the dashboard answers to besides its own address and
    # loopback (checked against DNS rebinding; `monitor serve --allowed-host` adds more).
    allowed_hosts: tuple[str, ...] = ()
    otel: OtelSettings | None = None  # [otel]: None when the section is absent


@dataclass(frozen=True)
class OtelSettings:
    """[otel]: where `monitor run` sends each probe as an OpenTelemetry span, and its metrics
    (monitor/otel/). Header values are secrets: they may hold a collector's token."""

    endpoint: str  # the OTLP/HTTP base URL; /v1/traces and /v1/metrics are appended
    headers: tuple[tuple[str, Secret], ...] = ()  # (name, value) sent with every export
    service_name: str = "monitor"  # the resource's service.name
    timeout_ms: int = 10_000  # one export, retries included
    metrics_interval_ms: int | None = None  # None: the SDK's (OTEL_METRIC_EXPORT_INTERVAL, 60 s)


@dataclass(frozen=True)
class RateLimits:
    """The x-ratelimit-* (or anthropic-ratelimit-*) headers as numbers; None where the server
    did not send one. Only Anthropic limits input and output tokens apart."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None
    limit_input_tokens: int | None = None
    remaining_input_tokens: int | None = None
    reset_input_tokens_s: float | None = None
    limit_output_tokens: int | None = None
    remaining_output_tokens: int | None = None
    reset_output_tokens_s: float | None = None


@dataclass(frozen=True)
class ToolCall:
    """A function the answer calls, as sent (a `tool_calls` entry's `function`)."""

    name: str | None
    arguments: str | None  # JSON text, unparsed: the model may send anything
    id: str | None = None  # the call's id ("call_...", Anthropic's "toolu_...")


@dataclass(frozen=True)
class Choice:
    index: int
    finish_reason: str | None
    content: str | None
    refusal: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


class CheckKind(enum.StrEnum):
    """What a check on the answer tests (probe/checks.py evaluates them). Stored as-is."""

    CONTENT_EQUALS = "content_equals"  # after trimming whitespace
    CONTENT_CONTAINS = "content_contains"
    CONTENT_REGEX = "content_regex"  # re.search
    JSON_SCHEMA = "json_schema"  # the content parsed as JSON
    FINISH_REASON = "finish_reason"
    MAX_COMPLETION_TOKENS = "max_completion_tokens"
    MAX_TOTAL = "max_total"  # expected in ms
    TOOL_CALL = "tool_call"  # expected {"name": str, "arguments": JSON schema or None}


@dataclass(frozen=True)
class Check:
    """One check a target's answers must pass (a target's `checks`)."""

    name: str  # unique within its target: the kind unless the config names it
    kind: CheckKind
    expected: Any  # JSON-able, as configured (durations in ms)


class CheckOutcome(enum.StrEnum):
    """Stored as-is."""

    PASS = "pass"
    FAIL = "fail"
    NOT_APPLICABLE = "not_applicable"  # the probe failed, or the answer lacks what is checked


@dataclass(frozen=True)
class CheckResult:
    check: str  # the Check's name
    outcome: CheckOutcome
    reason: str | None = None  # one line saying why it failed (None otherwise)


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
    cache_creation_input_tokens: int | None = None  # Anthropic: written to its prompt cache


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
    checks: tuple[CheckResult, ...] = ()  # the target's checks on this answer
    usage: Usage = Usage()
    stream_chunks: int | None = None
    # The body exactly as received (for a stream, the raw SSE bytes); capped at max_response_bytes.
    raw_response: bytes = b""
    # Only on the application's own calls recorded by `monitor proxy` (monitor/proxy/): the
    # result belongs to a traffic target, never a canary. The credential is never here, only
    # its sha256; request_path is set for endpoints stored raw (not chat); the flags say a body
    # was cut at the route's size cap.
    traffic: bool = False
    credential_hash: str | None = None
    request_path: str | None = None
    proxy_added_ms: float | None = None
    request_truncated: bool | None = None
    response_truncated: bool | None = None

    @property
    def content(self) -> str | None:
        """The first choice's text, the canary's answer."""
        return self.choices[0].content if self.choices else None

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None


# --- drift detection ------------------------------------------------------------------------


class DriftKind(enum.StrEnum):
    """What changed. Stored as-is, so values never change once released."""

    FINGERPRINT = "fingerprint"
    MODEL = "model"
    LATENCY = "latency"
    QUOTA = "quota"
    AVAILABILITY = "availability"
    OUTPUT = "output"
    QUALITY = "quality"


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class DetectionThresholds:
    """When a detector speaks up. Set under [defaults.detect] or a target's `detect` table;
    a key ending in `_ms` is written in the file without it, as a duration ("6h").
    monitor/detect/<kind>.py says how each one is used."""

    # The first probes of a target form its baselines (fingerprint pool, model, limits, output)
    # and never alert. Each baseline counts only the probes that carry its value, so a target
    # that fails at first, or a server that starts sending a header later, still gets a whole
    # baseline. 10 probes: under an hour at the usual intervals.
    warmup_probes: int = 10
    # A condition opened by a changed value (model, limit, output) clears after this many
    # probes in a row back on the baseline, and rate_limited after this many without a 429.
    # 1 would let a flapping value open and clear on every probe.
    revert_probes: int = 3
    # fingerprint
    # The pool needs longer than the other baselines: a backend that answers 1 probe in 5 is
    # missed by 10 probes 11% of the time, by 30 probes 0.1% of the time.
    fingerprint_warmup_probes: int = 30
    # A new fingerprint not seen for this many fingerprinted probes counts as reverted: more
    # than revert_probes, since a new backend taking a small share would otherwise flap.
    fingerprint_revert_probes: int = 10
    # A day: long enough to span a day's load pattern, short enough that a rotation (new
    # fingerprint in, old one out) is settled by the next day.
    fingerprint_retired_after_ms: int = 24 * 3_600_000
    fingerprint_accept_after_ms: int = 24 * 3_600_000
    # Share shift: the last `recent` fingerprinted probes against the `window` before them;
    # 100 recent probes are the fewest in which a backend with a 25% share going silent is
    # significant at the p-value below.
    fingerprint_share_window: int = 200
    fingerprint_share_recent: int = 100
    # Both must hold: a chi-square p-value under 1e-5 (the test runs at every probe, so a
    # looser one would fire on chance streaks) and one fingerprint's share moving by 20 points.
    fingerprint_share_p_value: float = 1e-5
    fingerprint_share_min_change: float = 0.2
    # model: a day, as for fingerprints; by then a re-pointed alias is the new normal.
    model_accept_after_ms: int = 24 * 3_600_000
    # latency (each of total, time to first token and openai-processing-ms on its own)
    # 1.5x: healthy jitter moves a median by far less, users notice by then.
    latency_ratio: float = 1.5
    # An hour at one probe a minute: enough for a stable p95, short enough to follow slow
    # daily trends.
    latency_baseline_probes: int = 60
    # 10 recent probes: a 2x regression is significant after 8 of them.
    latency_recent_probes: int = 10
    latency_min_samples: int = 8
    # 1e-4 keeps steady-state jitter with tail spikes quiet (bench/detect_false_alerts.py)
    # and still catches a 2x regression within 10 probes (bench/detect_delay.py).
    latency_p_value: float = 1e-4
    # Hysteresis: a condition clears only once the recent window is plainly not slower.
    latency_clear_p_value: float = 0.05
    # Absolute limits on the recent median (None: off), for targets with a latency SLO.
    latency_max_total_ms: float | None = None
    latency_max_ttft_ms: float | None = None
    latency_max_processing_ms: float | None = None
    # quota
    # Under 10% left: the next burst of the organisation's own traffic will hit 429s.
    quota_remaining_fraction: float = 0.1
    quota_accept_after_ms: int = 24 * 3_600_000
    # A single 429 is what a shared organisation limit does now and then; two within 10
    # probes mean the canary is being throttled.
    quota_rate_limited_probes: int = 2
    quota_rate_limited_window: int = 10
    # availability (429s are excluded: they are quota's business)
    # 3 in a row: one or two are the blips any API has; at 0.5% single errors, 3 in a row
    # happen by chance once in 8 million probes.
    availability_consecutive_failures: int = 3
    availability_window_probes: int = 20
    # More than 1 probe in 5 failing is an incident for the people using the API; at 0.5%
    # background errors, 5 of 20 happens about once in 20 million windows.
    availability_error_rate: float = 0.2
    # output (deterministic canaries only: temperature 0 and a seed); a day, as above.
    output_accept_after_ms: int = 24 * 3_600_000
    # quality (targets with checks): the share of answers passing every check over the last
    # `recent` checked probes against the `baseline` before them (frozen while open), by a
    # one-sided Fisher exact test; bench/detect_false_alerts.py and detect_delay.py chose them.
    quality_recent_probes: int = 20
    quality_baseline_probes: int = 200
    quality_baseline_min_probes: int = 40
    quality_p_value: float = 5e-4
    quality_min_drop: float = 0.15  # and the pass rate fell by at least 15 points
    quality_clear_p_value: float = 0.05


@dataclass(frozen=True)
class Observation:
    """What the detectors see of one probe: the fields drift is judged on, nothing heavy.
    Built the same way from a fresh ProbeResult and from a stored probe."""

    uid: str
    started_at: datetime  # aware UTC
    ok: bool
    error_kind: ErrorKind | None
    http_status: int | None
    requested_model: str | None
    model: str | None
    system_fingerprint: str | None
    total_ms: float | None
    time_to_first_token_ms: float | None
    openai_processing_ms: float | None
    rate_limits: RateLimits
    content: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    request_hash: str  # identical requests (payload and URL) share it
    deterministic: bool  # temperature 0 and a seed: the same request should get the same answer
    checks: tuple[CheckResult, ...] = ()  # the target's checks on this answer


@dataclass(frozen=True)
class DriftEvent:
    """A condition that began (`opened`) or ended at one probe of one target."""

    target: str
    kind: DriftKind
    key: str  # the condition within target and kind, e.g. "new:fp_abc" or "total_ms"
    opened: bool
    severity: Severity
    at: datetime  # the probe's started_at
    before: Any  # JSON-able
    after: Any  # JSON-able
    probe_uids: tuple[str, ...]  # the probes that show it, oldest first
    explanation: str  # one sentence a person understands


# --- reporting ------------------------------------------------------------------------------
