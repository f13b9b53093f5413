"""The schema's tables (store/schema.py) as typed ORM classes, for the code that names
columns through them (`ProbeRow.started_at`) or reads rows as objects.

Importing this loads sqlalchemy.orm and maps every class, ~0.1-0.15 s of CPU: the paths a
person runs by hand (`monitor status`, `alerts`, `probe`) use store/schema.py's tables instead
(tests/test_architecture.py keeps them off it). A column is defined once, in schema.py; the
annotations here only type it, and tests/test_store.py checks they name every column.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped

from monitor.store import schema

# Whatever builds or compares the schema (Alembic, the tests) reads it through Base.metadata.
schema.add_partial_indexes()

CANARY = schema.CANARY
PROBES_WITH_FACETS = schema.PROBES_WITH_FACETS
PROBE_FIELDS = schema.PROBE_FIELDS
PROBES_WITH_ANSWERS = schema.PROBES_WITH_ANSWERS
CHOICES = schema.CHOICES
TargetKind = schema.TargetKind
# Migrations name the column types as monitor.store.models.UtcDateTime (and the others below).
UtcDateTime = schema.UtcDateTime
UtcSeconds = schema.UtcSeconds
UtcMicros = schema.UtcMicros
HexUuid = schema.HexUuid
UpstreamId = schema.UpstreamId
Json = schema.Json


class Base(DeclarativeBase):
    metadata = schema.metadata


class TargetRow(Base):
    """A row of targets."""

    __table__ = schema.targets

    id: Mapped[int]
    name: Mapped[str]
    created_at: Mapped[datetime]
    kind: Mapped[str]


class TargetConfigRow(Base):
    """A row of target_configs."""

    __table__ = schema.target_configs

    id: Mapped[int]
    target_id: Mapped[int]
    config_hash: Mapped[str]
    config: Mapped[dict[str, Any]]
    first_seen_at: Mapped[datetime]


class RequestPayloadRow(Base):
    """A row of request_payloads."""

    __table__ = schema.request_payloads

    id: Mapped[int]
    sha256: Mapped[str]
    payload: Mapped[dict[str, Any]]


class ProbeFacetRow(Base):
    """A row of probe_facets."""

    __table__ = schema.probe_facets

    id: Mapped[int]
    sha256: Mapped[str]
    openai_version: Mapped[str | None]
    openai_organization: Mapped[str | None]
    model: Mapped[str | None]
    system_fingerprint: Mapped[str | None]
    service_tier: Mapped[str | None]
    finish_reason: Mapped[str | None]
    ratelimit_limit_requests: Mapped[int | None]
    ratelimit_limit_tokens: Mapped[int | None]
    ratelimit_limit_input_tokens: Mapped[int | None]
    ratelimit_limit_output_tokens: Mapped[int | None]


class ProbeAnswerRow(Base):
    """A row of probe_answers."""

    __table__ = schema.probe_answers

    id: Mapped[int]
    sha256: Mapped[str]
    choices: Mapped[list[dict[str, Any]]]


class ProbeRow(Base):
    """A row of probes."""

    __table__ = schema.probes

    id: Mapped[int]
    uid: Mapped[str]
    target_id: Mapped[int]
    target_config_id: Mapped[int]
    request_payload_id: Mapped[int]
    facet_id: Mapped[int]
    started_at: Mapped[datetime]
    stream: Mapped[bool]
    ok: Mapped[bool]
    error_kind: Mapped[str | None]
    error_detail: Mapped[str | None]
    http_status: Mapped[int | None]
    time_to_headers_ms: Mapped[float | None]
    total_ms: Mapped[float | None]
    time_to_first_token_ms: Mapped[float | None]
    output_tokens_per_s: Mapped[float | None]
    openai_processing_ms: Mapped[float | None]
    x_request_id: Mapped[str | None]
    retry_after_s: Mapped[float | None]
    ratelimit_remaining_requests: Mapped[int | None]
    ratelimit_remaining_tokens: Mapped[int | None]
    ratelimit_reset_requests_s: Mapped[float | None]
    ratelimit_reset_tokens_s: Mapped[float | None]
    ratelimit_remaining_input_tokens: Mapped[int | None]
    ratelimit_reset_input_tokens_s: Mapped[float | None]
    ratelimit_remaining_output_tokens: Mapped[int | None]
    ratelimit_reset_output_tokens_s: Mapped[float | None]
    response_id: Mapped[str | None]
    response_created_at: Mapped[datetime | None]
    choices: Mapped[list[dict[str, Any]] | None]
    answer_id: Mapped[int | None]
    stream_chunks: Mapped[int | None]
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    total_tokens: Mapped[int | None]
    cached_tokens: Mapped[int | None]
    prompt_audio_tokens: Mapped[int | None]
    reasoning_tokens: Mapped[int | None]
    completion_audio_tokens: Mapped[int | None]
    accepted_prediction_tokens: Mapped[int | None]
    rejected_prediction_tokens: Mapped[int | None]
    cache_creation_input_tokens: Mapped[int | None]
    response_headers_zlib: Mapped[bytes]
    raw_response_zlib: Mapped[bytes]
    raw_response_bytes: Mapped[int]
    replay_of: Mapped[int | None]
    credential_hash: Mapped[str | None]
    request_path: Mapped[str | None]
    proxy_added_ms: Mapped[float | None]
    request_truncated: Mapped[bool | None]
    response_truncated: Mapped[bool | None]


class CodecDictionaryRow(Base):
    """A row of codec_dictionaries."""

    __table__ = schema.codec_dictionaries

    id: Mapped[int]
    target_config_id: Mapped[int]
    created_at: Mapped[datetime]
    dictionary: Mapped[bytes]


class CheckResultRow(Base):
    """A row of check_results."""

    __table__ = schema.check_results

    probe_id: Mapped[int]
    check_name: Mapped[str]
    target_id: Mapped[int]
    started_at: Mapped[datetime]
    outcome: Mapped[str]
    reason: Mapped[str | None]
    model: Mapped[str | None]
    system_fingerprint: Mapped[str | None]


class SlotRow(Base):
    """A row of slots."""

    __table__ = schema.slots

    id: Mapped[int]
    target_id: Mapped[int]
    slot_at: Mapped[datetime]
    instance_id: Mapped[str]
    state: Mapped[str]
    reason_kind: Mapped[str | None]
    reason: Mapped[str | None]
    probe_uid: Mapped[str | None]


class InstanceRow(Base):
    """A row of instances."""

    __table__ = schema.instances

    id: Mapped[str]
    hostname: Mapped[str]
    pid: Mapped[int]
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]


class DetectorStateRow(Base):
    """A row of detector_states."""

    __table__ = schema.detector_states

    target_id: Mapped[int]
    thresholds_hash: Mapped[str]
    last_probe_id: Mapped[int]
    state_zlib: Mapped[bytes]
    updated_at: Mapped[datetime]


class DriftEventRow(Base):
    """A row of drift_events."""

    __table__ = schema.drift_events

    id: Mapped[int]
    target_id: Mapped[int]
    kind: Mapped[str]
    key: Mapped[str]
    opened: Mapped[bool]
    severity: Mapped[str]
    at: Mapped[datetime]
    probe_uid: Mapped[str]
    before: Mapped[Any]
    after: Mapped[Any]
    probe_uids: Mapped[list[str]]
    explanation: Mapped[str]


class AlertRow(Base):
    """A row of alerts."""

    __table__ = schema.alerts

    id: Mapped[int]
    target_id: Mapped[int]
    kind: Mapped[str]
    key: Mapped[str]
    severity: Mapped[str]
    state: Mapped[str]
    streak: Mapped[int]
    flaps: Mapped[int]
    started_at: Mapped[datetime]
    opened_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    before: Mapped[Any]
    after: Mapped[Any]
    probe_uids: Mapped[list[str]]
    explanation: Mapped[str]
    resolution: Mapped[str | None]
    last_notified_at: Mapped[datetime | None]
    acked_at: Mapped[datetime | None]
    acked_by: Mapped[str | None]


class OutboxRow(Base):
    """A row of outbox."""

    __table__ = schema.outbox

    id: Mapped[int]
    alert_id: Mapped[int]
    change: Mapped[str]
    created_at: Mapped[datetime]
    state: Mapped[str]
    note: Mapped[str | None]
    notification_id: Mapped[int | None]


class NotificationRow(Base):
    """A row of notifications."""

    __table__ = schema.notifications

    id: Mapped[int]
    uid: Mapped[str]
    created_at: Mapped[datetime]
    change: Mapped[str]
    title: Mapped[str]


class DeliveryRow(Base):
    """A row of deliveries."""

    __table__ = schema.deliveries

    id: Mapped[int]
    notification_id: Mapped[int]
    channel: Mapped[str]
    destination: Mapped[str]
    body: Mapped[dict[str, Any]]
    attempts: Mapped[int]
    next_attempt_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    gave_up_at: Mapped[datetime | None]
    last_status: Mapped[int | None]
    last_error: Mapped[str | None]


class _RollupColumns:
    """The columns hourly_rollups and daily_rollups share."""

    id: Mapped[int]
    target_id: Mapped[int]
    start_at: Mapped[datetime]
    probes: Mapped[int]
    ok: Mapped[int]
    errors: Mapped[dict[str, int]]
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    total_tokens: Mapped[int]
    total_ms_sketch: Mapped[bytes | None]
    headers_ms_sketch: Mapped[bytes | None]
    ttft_ms_sketch: Mapped[bytes | None]
    processing_ms_sketch: Mapped[bytes | None]
    tokens_per_s_sketch: Mapped[bytes | None]
    fingerprints: Mapped[dict[str, list[int]]]
    models: Mapped[dict[str, list[int]]]
    limits_at: Mapped[datetime | None]
    limit_requests: Mapped[int | None]
    limit_tokens: Mapped[int | None]
    remaining_requests: Mapped[int | None]
    remaining_tokens: Mapped[int | None]
    min_headroom_requests: Mapped[float | None]
    min_headroom_tokens: Mapped[float | None]
    last_error_at: Mapped[datetime | None]
    last_error_kind: Mapped[str | None]
    last_error_status: Mapped[int | None]
    last_error_detail: Mapped[str | None]


class HourlyRollupRow(_RollupColumns, Base):
    """A row of hourly_rollups."""

    __table__ = schema.hourly_rollups


class DailyRollupRow(_RollupColumns, Base):
    """A row of daily_rollups."""

    __table__ = schema.daily_rollups


class RollupTotalRow(Base):
    """A row of rollup_totals."""

    __table__ = schema.rollup_totals

    target_id: Mapped[int]
    probes: Mapped[int]
    ok: Mapped[int]
    errors: Mapped[dict[str, int]]
    total_ms_sketch: Mapped[bytes | None]
    headers_ms_sketch: Mapped[bytes | None]
    ttft_ms_sketch: Mapped[bytes | None]
    processing_ms_sketch: Mapped[bytes | None]
    newest_at: Mapped[datetime | None]
    newest_ok: Mapped[bool | None]
    ok_at: Mapped[datetime | None]
    ok_fingerprint: Mapped[str | None]
    ok_model: Mapped[str | None]
    limits_at: Mapped[datetime | None]
    limit_requests: Mapped[int | None]
    limit_tokens: Mapped[int | None]
    remaining_requests: Mapped[int | None]
    remaining_tokens: Mapped[int | None]
    checks: Mapped[dict[str, dict[str, int]]]


class RollupStateRow(Base):
    """A row of rollup_state."""

    __table__ = schema.rollup_state

    id: Mapped[int]
    last_probe_id: Mapped[int]
    gaps: Mapped[list[list[int]]]
    updated_at: Mapped[datetime]


class RetentionStateRow(Base):
    """A row of retention_state."""

    __table__ = schema.retention_state

    id: Mapped[int]
    pruned_before: Mapped[datetime | None]
    checked_id: Mapped[int]
    unreclaimed_bytes: Mapped[int]
    updated_at: Mapped[datetime]


class ReplayRunRow(Base):
    """A row of replay_runs."""

    __table__ = schema.replay_runs

    id: Mapped[int]
    key: Mapped[str]
    open_key: Mapped[str | None]
    source_target_id: Mapped[int]
    destination_target_id: Mapped[int]
    since_at: Mapped[datetime | None]
    until_at: Mapped[datetime | None]
    max_probes: Mapped[int | None]
    items: Mapped[int]
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class ReplayItemRow(Base):
    """A row of replay_items."""

    __table__ = schema.replay_items

    id: Mapped[int]
    run_id: Mapped[int]
    probe_id: Mapped[int]
    request_payload_id: Mapped[int]
    position: Mapped[int]
    state: Mapped[str]
    claimed_at: Mapped[datetime | None]
    replay_probe_id: Mapped[int | None]
    rate_limited: Mapped[int]
