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
    text,
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

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        # SQLite hands back the stored text; one C-speed parse instead of SQLAlchemy's regex
        # then process_result_value (a report of two days of probes reads ~30,000 of them).
        def parse(value: str | None) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)

        return parse


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
    # 'canary': a configured target that monitor probes; 'traffic': the application's own
    # calls through `monitor proxy`, one target per route and requested model ("route/model").
    # Canary reads (status, reports, /metrics, badges) filter on this, never probe by probe.
    kind: Mapped[str] = mapped_column(String(10), server_default=text("'canary'"))


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
        # The report lists the replays in its range: this holds only those, so a year's
        # report never looks through a year of canaries to find them.
        Index("ix_probes_replays_target_id_started_at", "target_id", "started_at",
              sqlite_where=text("replay_of IS NOT NULL"),
              postgresql_where=text("replay_of IS NOT NULL")),
        # An original's replays (export, the probe page). Replays only: a whole index would
        # tempt SQLite to answer `replay_of IS NULL` (every canary read) through it.
        Index("ix_probes_replay_of", "replay_of",
              sqlite_where=text("replay_of IS NOT NULL"),
              postgresql_where=text("replay_of IS NOT NULL")),
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
    openai_version: Mapped[str | None] = mapped_column(Text)
    openai_organization: Mapped[str | None] = mapped_column(Text)
    x_request_id: Mapped[str | None] = mapped_column(Text)
    retry_after_s: Mapped[float | None] = mapped_column(Float)
    ratelimit_limit_requests: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_limit_tokens: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_remaining_requests: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_remaining_tokens: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_reset_requests_s: Mapped[float | None] = mapped_column(Float)
    ratelimit_reset_tokens_s: Mapped[float | None] = mapped_column(Float)
    # Anthropic limits input and output tokens apart (anthropic-ratelimit-input-tokens-*).
    ratelimit_limit_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_remaining_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_reset_input_tokens_s: Mapped[float | None] = mapped_column(Float)
    ratelimit_limit_output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_remaining_output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_reset_output_tokens_s: Mapped[float | None] = mapped_column(Float)

    response_id: Mapped[str | None] = mapped_column(Text)
    response_created_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    model: Mapped[str | None] = mapped_column(Text)
    system_fingerprint: Mapped[str | None] = mapped_column(Text)
    service_tier: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(Text)  # of the first choice
    choices: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)
    stream_chunks: Mapped[int | None] = mapped_column(BigInteger)

    prompt_tokens: Mapped[int | None] = mapped_column(BigInteger)
    completion_tokens: Mapped[int | None] = mapped_column(BigInteger)
    total_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cached_tokens: Mapped[int | None] = mapped_column(BigInteger)
    prompt_audio_tokens: Mapped[int | None] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int | None] = mapped_column(BigInteger)
    completion_audio_tokens: Mapped[int | None] = mapped_column(BigInteger)
    accepted_prediction_tokens: Mapped[int | None] = mapped_column(BigInteger)
    rejected_prediction_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cache_creation_input_tokens: Mapped[int | None] = mapped_column(BigInteger)  # Anthropic

    # The headers (already redacted) as JSON and the body exactly as received (SSE bytes for
    # streams), each compressed by store/codec.py against a preset dictionary: together they
    # are most of a probe's bytes, and they shrink ~4x. The parsed columns above are the ones
    # to query.
    response_headers_zlib: Mapped[bytes] = mapped_column(Blob)
    raw_response_zlib: Mapped[bytes] = mapped_column(Blob)
    raw_response_bytes: Mapped[int] = mapped_column(BigInteger)
    # The probe whose stored request this one re-sent (`monitor replay`); None for a canary.
    # Indexed (replays only, above) for finding an original's replays and for export, which
    # carries the link along.
    replay_of: Mapped[int | None] = mapped_column(
        Id, ForeignKey("probes.id", ondelete="SET NULL")
    )
    # Traffic recorded by `monitor proxy` only (None on canaries and replays): a sha256 of the
    # app's credential (never the credential), so keys can be told apart; the path called
    # when it was not Chat Completions or Messages (stored raw, unparsed); the proxy's own
    # added time; and whether the request or answer body was cut at the route's size cap.
    credential_hash: Mapped[str | None] = mapped_column(String(64))
    request_path: Mapped[str | None] = mapped_column(Text)
    proxy_added_ms: Mapped[float | None] = mapped_column(Float)
    request_truncated: Mapped[bool | None] = mapped_column(Boolean)
    response_truncated: Mapped[bool | None] = mapped_column(Boolean)


# The canary's own probes: everything but replays, which re-send an old request on demand.
# Rollups, reports, /metrics and detection read only these, so replaying changes no number.
# (Recorded traffic is kept apart a level up: its probes belong to targets of kind 'traffic'.)
CANARY = ProbeRow.replay_of.is_(None)


class TargetKind:
    """targets.kind. Stored as-is."""

    CANARY = "canary"
    TRAFFIC = "traffic"


class CheckResultRow(Base):
    """One check's outcome on one canary probe (`CheckOutcome`, a one-line reason when it
    failed). The probe's fingerprint and model are copied in, so pass rates per target, check,
    fingerprint and model are counted from this table alone. Replays store none: `monitor
    replay` evaluates their answers when it shows them."""

    __tablename__ = "check_results"
    __table_args__ = (
        # Reports, the dashboard and /metrics count a target's outcomes over a time range.
        Index("ix_check_results_target_id_started_at", "target_id", "started_at"),
    )

    probe_id: Mapped[int] = mapped_column(
        Id, ForeignKey("probes.id", ondelete="CASCADE"), primary_key=True)
    check_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(Text)
    system_fingerprint: Mapped[str | None] = mapped_column(Text)


class SlotRow(Base):
    """One scheduled slot of one target: claimed by exactly one instance, then probed or
    skipped (with the reason), once its time came; or reserved ahead by a 429 backoff, and
    skipped when its time comes (store/leases.py). The unique (target, slot) pair is how
    several daemons on one PostgreSQL share the work without consensus of their own."""

    __tablename__ = "slots"
    __table_args__ = (
        UniqueConstraint("target_id", "slot_at"),
        # Reports, `monitor status` and /metrics count skipped slots per target and kind over
        # a range: a partial index holds those few rows only, not the probed ones (one a probe).
        Index("ix_slots_skipped_target_id_slot_at", "target_id", "slot_at",
              sqlite_where=text("state = 'skipped'"),
              postgresql_where=text("state = 'skipped'")),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    slot_at: Mapped[datetime] = mapped_column(UtcDateTime)
    instance_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # SlotState
    reason_kind: Mapped[str | None] = mapped_column(String(20))  # SkipKind, for counting
    reason: Mapped[str | None] = mapped_column(Text)  # the same in words, for people
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
    key: Mapped[str] = mapped_column(Text)  # may embed an upstream value (a fingerprint)
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
    key: Mapped[str] = mapped_column(Text)  # may embed an upstream value (a fingerprint)
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


class _RollupColumns:
    """One target's probes in one UTC hour or day, folded by store/rollups.py: what reports
    read instead of raw probes. Sketches are monitor.sketch encodings (None: nothing
    measured); `fingerprints` and `models` map each value to [count, first seen, last seen]
    (microseconds since the epoch), so first/last seen outlive raw-probe retention."""

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    start_at: Mapped[datetime] = mapped_column(UtcDateTime)
    probes: Mapped[int] = mapped_column(Integer)
    ok: Mapped[int] = mapped_column(Integer)
    errors: Mapped[dict[str, int]] = mapped_column(Json)  # error_kind -> probes
    # Usage summed over successful probes.
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    # Latency of successful probes, and streaming output speed.
    total_ms_sketch: Mapped[bytes | None] = mapped_column(Blob)
    headers_ms_sketch: Mapped[bytes | None] = mapped_column(Blob)
    ttft_ms_sketch: Mapped[bytes | None] = mapped_column(Blob)
    processing_ms_sketch: Mapped[bytes | None] = mapped_column(Blob)
    tokens_per_s_sketch: Mapped[bytes | None] = mapped_column(Blob)
    fingerprints: Mapped[dict[str, list[int]]] = mapped_column(Json)
    models: Mapped[dict[str, list[int]]] = mapped_column(Json)
    # The newest probe in the bucket that carried rate-limit headers, and the lowest
    # remaining / limit seen in it.
    limits_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    limit_requests: Mapped[int | None] = mapped_column(BigInteger)
    limit_tokens: Mapped[int | None] = mapped_column(BigInteger)
    remaining_requests: Mapped[int | None] = mapped_column(BigInteger)
    remaining_tokens: Mapped[int | None] = mapped_column(BigInteger)
    min_headroom_requests: Mapped[float | None] = mapped_column(Float)
    min_headroom_tokens: Mapped[float | None] = mapped_column(Float)
    # The newest failed probe in the bucket.
    last_error_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error_kind: Mapped[str | None] = mapped_column(String(40))
    last_error_status: Mapped[int | None] = mapped_column(SmallInteger)
    last_error_detail: Mapped[str | None] = mapped_column(Text)


class HourlyRollupRow(_RollupColumns, Base):
    """One target's probes in one UTC hour (the columns are described in _RollupColumns)."""

    __tablename__ = "hourly_rollups"
    # Reports read a target's hours over a time range; catch_up looks rows up by key.
    __table_args__ = (UniqueConstraint("target_id", "start_at"),)


class DailyRollupRow(_RollupColumns, Base):
    """The same per UTC day. A table of its own: a year's report reads 365 rows per target,
    which sit together here instead of scattered among 24 times as many hours."""

    __tablename__ = "daily_rollups"
    __table_args__ = (UniqueConstraint("target_id", "start_at"),)


class RollupTotalRow(Base):
    """One target's outcomes and latency sketches over all its history, for /metrics."""

    __tablename__ = "rollup_totals"

    target_id: Mapped[int] = mapped_column(
        ForeignKey("targets.id", ondelete="CASCADE"), primary_key=True
    )
    probes: Mapped[int] = mapped_column(BigInteger)
    ok: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[dict[str, int]] = mapped_column(Json)
    total_ms_sketch: Mapped[bytes | None] = mapped_column(Blob)
    headers_ms_sketch: Mapped[bytes | None] = mapped_column(Blob)
    ttft_ms_sketch: Mapped[bytes | None] = mapped_column(Blob)
    processing_ms_sketch: Mapped[bytes | None] = mapped_column(Blob)


class RollupStateRow(Base):
    """How far rollups have folded probes (one row, id 1; locked by each catch_up). Ids up to
    `last_probe_id` were read, except `gaps`: ranges [first, last, noticed at (us)] missing
    when read, because a transaction that took those ids had not committed yet (PostgreSQL
    hands out ids before commit) or rolled back; they are looked for again until they expire."""

    __tablename__ = "rollup_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_probe_id: Mapped[int] = mapped_column(Id)
    gaps: Mapped[list[list[int]]] = mapped_column(Json)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RetentionStateRow(Base):
    """How far raw-probe retention has got (one row, id 1): every probe started before
    `pruned_before` with id up to `checked_id` has had its raw body and headers emptied."""

    __tablename__ = "retention_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pruned_before: Mapped[datetime | None] = mapped_column(UtcDateTime)
    checked_id: Mapped[int] = mapped_column(Id)
    # Bytes emptied on SQLite since its last VACUUM: what a VACUUM would give back.
    unreclaimed_bytes: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


# `monitor sim --recorded` looks up the newest successful answer to one request payload: an
# index seek by payload, then backwards by id, instead of a scan of every probe.
Index("ix_probes_request_payload_id_ok_id", ProbeRow.request_payload_id, ProbeRow.ok, ProbeRow.id)


class ReplayRunRow(Base):
    """One batch replay (`monitor replay --target T --since D`): the stored requests it re-sends,
    fixed when it starts, so that running the same command again after an interruption resumes
    it instead of sending anything twice. `open_key` is the command's identity while the run is
    unfinished and None after: at most one open run per command, and a finished one can be
    run afresh."""

    __tablename__ = "replay_runs"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    key: Mapped[str] = mapped_column(String(64))  # sha256 of the command's options
    open_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    source_target_id: Mapped[int] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    destination_target_id: Mapped[int] = mapped_column(
        ForeignKey("targets.id", ondelete="CASCADE")
    )
    since_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    until_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    max_probes: Mapped[int | None] = mapped_column(Integer)  # --limit
    items: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class ReplayItemRow(Base):
    """One stored request of a batch replay. `pending`, then `sending` (claimed, committed
    before the request goes out), then `done` with the replay's probe stored in the same
    transaction. A `sending` item whose process died is never sent again: the request may have
    reached the server."""

    __tablename__ = "replay_items"
    __table_args__ = (
        UniqueConstraint("run_id", "probe_id"),
        # Workers claim the run's next pending item in position order.
        Index("ix_replay_items_run_id_state_position", "run_id", "state", "position"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("replay_runs.id", ondelete="CASCADE"))
    probe_id: Mapped[int] = mapped_column(ForeignKey("probes.id", ondelete="CASCADE"))
    # The original's, copied so that a claim is one statement.
    request_payload_id: Mapped[int] = mapped_column(ForeignKey("request_payloads.id"))
    position: Mapped[int] = mapped_column(Integer)  # oldest original first
    state: Mapped[str] = mapped_column(String(10))  # ReplayState
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    replay_probe_id: Mapped[int | None] = mapped_column(
        ForeignKey("probes.id", ondelete="SET NULL")
    )
    rate_limited: Mapped[int] = mapped_column(Integer)  # 429s waited out before the answer
