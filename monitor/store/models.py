"""The schema, as typed SQLAlchemy 2.0 models. Alembic revisions in migrations/ are its truth;
tests/test_migrations.py proves the two agree.

Units are in column names (`total_ms`, `reset_requests_s`); every timestamp is aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import BYTEA, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints from the first revision, so later migrations (and SQLite batch mode, which
# recreates tables) can refer to them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC in, aware UTC out. Refuses naive datetimes instead of guessing their zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: monitor stores aware UTC only")
        value = value.astimezone(UTC)
        # SQLite has no time zones; storing the naive UTC wall time keeps values sortable as text.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL: smaller, indexable; plain JSON text on SQLite.
Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids for years of probes.
Id = BigInteger().with_variant(Integer(), "sqlite")
Blob = LargeBinary().with_variant(BYTEA(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TargetRow(Base):
    """A configured target, by name. Its configurations over time are in target_configs."""

    __tablename__ = "targets"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class TargetConfigRow(Base):
    """One effective configuration of a target (never the key); a new hash marks a change."""

    __tablename__ = "target_configs"
    __table_args__ = (UniqueConstraint("target_id", "config_hash"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    config_hash: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(Json)
    first_seen_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RequestPayloadRow(Base):
    """A request body, stored once however many probes sent it (canaries repeat exactly)."""

    __tablename__ = "request_payloads"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(Json)


class ProbeRow(Base):
    """One canary call: queryable columns for every captured field, plus the raw exchange."""

    __tablename__ = "probes"
    __table_args__ = (
        # Detectors, reports and `monitor probe` read one target's history in time order.
        Index("ix_probes_target_id_started_at", "target_id", "started_at"),
        # Live detection reads a target's probes stored after the last one it folded: without
        # this, PostgreSQL's generic plan for `id > $1` sorts the target's whole history.
        Index("ix_probes_target_id_id", "target_id", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # The probe's own id, fixed before it is stored: a spooled result replayed twice is one row.
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    target_config_id: Mapped[int] = mapped_column(ForeignKey("target_configs.id"))
    request_payload_id: Mapped[int] = mapped_column(ForeignKey("request_payloads.id"))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    stream: Mapped[bool] = mapped_column(Boolean)
    ok: Mapped[bool] = mapped_column(Boolean)
    error_kind: Mapped[str | None] = mapped_column(String(40))
    error_detail: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(SmallInteger)

    time_to_headers_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float | None] = mapped_column(Float)
    time_to_first_token_ms: Mapped[float | None] = mapped_column(Float)
    output_tokens_per_s: Mapped[float | None] = mapped_column(Float)

    openai_processing_ms: Mapped[float | None] = mapped_column(Float)
    openai_version: Mapped[str | None] = mapped_column(String(40))
    openai_organization: Mapped[str | None] = mapped_column(String(200))
    x_request_id: Mapped[str | None] = mapped_column(String(200))
    retry_after_s: Mapped[float | None] = mapped_column(Float)
    ratelimit_limit_requests: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_limit_tokens: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_remaining_requests: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_remaining_tokens: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_reset_requests_s: Mapped[float | None] = mapped_column(Float)
    ratelimit_reset_tokens_s: Mapped[float | None] = mapped_column(Float)

    response_id: Mapped[str | None] = mapped_column(String(200))
    response_created_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    model: Mapped[str | None] = mapped_column(String(200))
    system_fingerprint: Mapped[str | None] = mapped_column(String(200))
    service_tier: Mapped[str | None] = mapped_column(String(40))
    finish_reason: Mapped[str | None] = mapped_column(String(40))  # of the first choice
    choices: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)
    stream_chunks: Mapped[int | None] = mapped_column(Integer)

    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    prompt_audio_tokens: Mapped[int | None] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_audio_tokens: Mapped[int | None] = mapped_column(Integer)
    accepted_prediction_tokens: Mapped[int | None] = mapped_column(Integer)
    rejected_prediction_tokens: Mapped[int | None] = mapped_column(Integer)

    # The headers (already redacted) as JSON and the body exactly as received (SSE bytes for
    # streams), each compressed by store/codec.py against a preset dictionary: together they
    # are most of a probe's bytes, and they shrink ~4x. The parsed columns above are the ones
    # to query.
    response_headers_zlib: Mapped[bytes] = mapped_column(Blob)
    raw_response_zlib: Mapped[bytes] = mapped_column(Blob)
    raw_response_bytes: Mapped[int] = mapped_column(Integer)


class SlotRow(Base):
    """One scheduled slot of one target: claimed by exactly one instance, then probed or
    skipped (with the reason). The unique (target, slot) pair is how several daemons on one
    PostgreSQL share the work without consensus of their own."""

    __tablename__ = "slots"
    __table_args__ = (UniqueConstraint("target_id", "slot_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    slot_at: Mapped[datetime] = mapped_column(UtcDateTime)
    instance_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # SlotState
    reason: Mapped[str | None] = mapped_column(Text)
    probe_uid: Mapped[str | None] = mapped_column(String(32))


class InstanceRow(Base):
    """A running `monitor run`, alive while its heartbeat is recent."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime)


class DetectorStateRow(Base):
    """Where live detection stands for one target: the detectors' snapshot after folding every
    probe up to `last_probe_id`. Several daemons share it, so each folds what the others
    stored; a changed `thresholds_hash` means folding the history again."""

    __tablename__ = "detector_states"

    target_id: Mapped[int] = mapped_column(
        ForeignKey("targets.id", ondelete="CASCADE"), primary_key=True
    )
    thresholds_hash: Mapped[str] = mapped_column(String(64))
    last_probe_id: Mapped[int] = mapped_column(Id)
    # TargetDetector.snapshot() as zlib'd JSON: rewritten after every probe, and a quarter of
    # its JSON size (about 3 of 12 KB); nothing queries inside it.
    state_zlib: Mapped[bytes] = mapped_column(Blob)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class DriftEventRow(Base):
    """A condition that opened or cleared at one probe (a DriftEvent). Unique per probe, so
    folding the same probe twice (a crash before the state was saved) stores it once."""

    __tablename__ = "drift_events"
    __table_args__ = (
        UniqueConstraint("probe_uid", "kind", "key", "opened"),
        Index("ix_drift_events_target_id_at", "target_id", "at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # DriftKind
    key: Mapped[str] = mapped_column(String(300))
    opened: Mapped[bool] = mapped_column(Boolean)
    severity: Mapped[str] = mapped_column(String(10))  # Severity
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    probe_uid: Mapped[str] = mapped_column(String(32))  # the probe it happened at
    before: Mapped[Any] = mapped_column(Json, nullable=True)
    after: Mapped[Any] = mapped_column(Json, nullable=True)
    probe_uids: Mapped[list[str]] = mapped_column(Json)
    explanation: Mapped[str] = mapped_column(Text)


class AlertRow(Base):
    """One alert: a condition that held long enough to open, until it resolved. `pending`
    rows are conditions not yet held for `open_after` probes; they notify nobody."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_target_id_kind_key", "target_id", "kind", "key"),
        Index("ix_alerts_state", "state"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    key: Mapped[str] = mapped_column(String(300))
    severity: Mapped[str] = mapped_column(String(10))
    state: Mapped[str] = mapped_column(String(10))  # pending | open | resolved
    # Probes in a row the condition has held (pending) or has been clear (open).
    streak: Mapped[int] = mapped_column(Integer)
    # Times it re-opened within the cooldown, silently, instead of a new alert.
    flaps: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)  # the condition's first probe
    opened_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    before: Mapped[Any] = mapped_column(Json, nullable=True)
    after: Mapped[Any] = mapped_column(Json, nullable=True)
    probe_uids: Mapped[list[str]] = mapped_column(Json)
    explanation: Mapped[str] = mapped_column(Text)
    resolution: Mapped[str | None] = mapped_column(Text)  # why it cleared
    last_notified_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    acked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    acked_by: Mapped[str | None] = mapped_column(String(200))


class OutboxRow(Base):
    """An alert's state change to tell people about, written in the transaction that made
    it. `pending` rows wait to be grouped into a notification; `held` ones arrived during a
    maintenance window; `dropped` ones were outlived by a later change."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_state", "state"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    change: Mapped[str] = mapped_column(String(10))  # opened | resolved | reminder
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(String(10))  # pending | held | grouped | dropped
    note: Mapped[str | None] = mapped_column(Text)
    notification_id: Mapped[int | None] = mapped_column(
        ForeignKey("notifications.id", ondelete="SET NULL")
    )


class NotificationRow(Base):
    """One message about one or more alert changes (grouped), sent on every channel."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)  # the receivers' idempotency key
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    change: Mapped[str] = mapped_column(String(10))
    title: Mapped[str] = mapped_column(Text)


class DeliveryRow(Base):
    """A notification on one channel: the exact body to send, and how sending it went.
    Delivered once it got a 2xx; retried with backoff until then, across restarts."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("notification_id", "channel"),
        Index("ix_deliveries_next_attempt_at", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE")
    )
    # "log", or "webhook:"/"slack:" and a hash of the URL (URLs are secrets: never stored).
    channel: Mapped[str] = mapped_column(String(80))
    destination: Mapped[str] = mapped_column(String(300))  # the URL, redacted
    body: Mapped[dict[str, Any]] = mapped_column(Json)
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # None: finished
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)  # an instance is sending
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    gave_up_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
