"""The schema, as SQLAlchemy Core tables. Alembic revisions in migrations/ are its truth;
tests/test_migrations.py proves the two agree.

Core on purpose: defining these costs little, and the commands people run by hand (`monitor
status`, `alerts`, `probe`) read and write through them without loading the ORM at all
(docs/benchmarks.md, "Command start-up"). store/models.py maps ORM classes onto the same tables
for the code that still names columns through them.

Units are in column names (`total_ms`, `reset_requests_s`); every timestamp is aware UTC.
"""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    REAL,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    cast,
    func,
    text,
)
from sqlalchemy.sql.elements import ColumnElement, NamedColumn
from sqlalchemy.types import TypeEngine

from monitor.store import upstream_ids

# Named constraints from the first revision, so later migrations (and SQLite batch mode, which
# recreates tables) can refer to them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


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
        if dialect.name == "postgresql":
            return _aware_utc  # what process_result_value does, without the wrapper's calls
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        # SQLite hands back the stored text; one C-speed parse instead of SQLAlchemy's regex
        # then process_result_value (a report of two days of probes reads ~30,000 of them).
        def parse(value: str | None) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)

        return parse


def _aware_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UtcSeconds(UtcDateTime):
    """UtcDateTime for a time in whole seconds that nothing compares in SQL: SQLite stores it as
    the unix time, 4 bytes where the text takes 26 (text stored before still reads)."""

    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        as_text = super().bind_processor(dialect)
        if dialect.name != "sqlite" or as_text is None:
            return as_text

        def bind(value: datetime | None) -> Any:
            if value is not None and value.tzinfo is not None and value.microsecond == 0:
                return int(value.timestamp())
            return as_text(value)

        return bind

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def parse(value: int | str | None) -> datetime | None:
            if value is None:
                return None
            if isinstance(value, int):
                return datetime.fromtimestamp(value, UTC)
            return datetime.fromisoformat(value).replace(tzinfo=UTC)

        return parse


class UtcMicros(UtcDateTime):
    """UtcDateTime that SQLite stores as integer microseconds since 1970 (8 bytes where the
    text takes 26, in the row and again in every index on it), for probes.started_at, which
    every read of a time range compares and sorts: integers compare as the times do. Every
    SQL expression on such a column must expect the integer there (timeline.iso_utc does);
    revision 0013 converted the text stored before. PostgreSQL keeps timestamptz."""

    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        return _micros

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        return _from_micros


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: monitor stores aware UTC only")
    return (value - _EPOCH) // _MICROSECOND


def _from_micros(value: int | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int):
        return _EPOCH + timedelta(microseconds=value)
    # Text as UtcDateTime stored it: a database read before revision 0013 converted it.
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class HexUuid(TypeDecorator[str]):
    """A uuid as 32 lower-case hex digits in Python, stored as its 16 bytes: PostgreSQL's uuid,
    and on SQLite a blob (in a column declared VARCHAR(32), which SQLite does not enforce).
    Half the bytes of the text, in the row and again in its unique index. (PostgreSQL's type
    is imported when used, as for Json below.)"""

    impl = String(32)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import UUID

            return dialect.type_descriptor(UUID(as_uuid=False))
        return dialect.type_descriptor(String(32))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if len(value) != 32 or value.strip("0123456789abcdef"):
            raise ValueError(f"uid {value!r}: expected 32 lower-case hex digits")
        return value if dialect.name == "postgresql" else bytes.fromhex(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return value.hex() if isinstance(value, bytes) else str(value).replace("-", "")

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name != "postgresql":
            return super().result_processor(dialect, coltype)
        # psycopg hands back uuid.UUID: its 32 digits at once, not through the uuid type's
        # str() (dashes) and then process_result_value taking them out again (2.5 us a row:
        # a quarter of reading a year of one target's probes for the detectors).
        return _uuid_hex


def _uuid_hex(value: Any) -> str | None:
    if value is None:
        return None
    return value.hex if isinstance(value, uuid.UUID) else str(value).replace("-", "")


class UpstreamId(TypeDecorator[str]):
    """An upstream's id (x-request-id, a response's id) as text in Python, stored in the bytes
    of store/upstream_ids.py: about half the text for the shapes OpenAI, Anthropic and Azure
    use. PostgreSQL's bytea; on SQLite a blob in the TEXT column (SQLite does not enforce it),
    as HexUuid does. An equality lookup binds the same bytes; nothing searches these by prefix."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import BYTEA

            return dialect.type_descriptor(BYTEA())
        return dialect.type_descriptor(Text())

    def bind_processor(self, dialect: Dialect) -> Any:
        return _encode_upstream_id

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        return _decode_upstream_id


def _encode_upstream_id(value: str | None) -> bytes | None:
    return None if value is None else upstream_ids.encode(value)


def _decode_upstream_id(value: bytes | None) -> str | None:
    return None if value is None else upstream_ids.decode(bytes(value))


class Json(TypeDecorator[Any]):
    """JSONB on PostgreSQL (smaller, indexable), plain JSON text elsewhere. A decorator rather
    than `JSON().with_variant(JSONB(), "postgresql")`: that needs the JSONB type object when
    the schema is defined, and sqlalchemy.dialects.postgresql imports every PostgreSQL
    driver's dialect and asyncio, which a command on SQLite would pay for at each start."""

    impl = JSON
    cache_ok = True
    # As JSON: Python None is stored as JSON null, not SQL NULL.
    should_evaluate_none = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


class JsonOrNull(Json):
    """Json whose Python None is SQL NULL, which takes no bytes (JSON null takes 4 on SQLite
    and ~8 on PostgreSQL): probes.choices, empty on every probe whose answer is in
    probe_answers or that got none. Both read back as None."""

    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))


class Blob(TypeDecorator[bytes]):
    """BYTEA on PostgreSQL, BLOB elsewhere (imported when used, as for Json)."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import BYTEA

            return dialect.type_descriptor(BYTEA())
        return dialect.type_descriptor(LargeBinary())


class Count(TypeDecorator[int]):
    """A count (tokens, chunks, bytes) that is usually small and often 0: SQLite's INTEGER
    already stores it in as few bytes as it needs; on PostgreSQL, NUMERIC does (3 bytes for 0,
    5 up to 9,999, 7 up to 99,999,999) where bigint always takes 8 and its alignment. Python
    sees an int either way."""

    impl = BigInteger
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric())
        return dialect.type_descriptor(BigInteger())

    def bind_processor(self, dialect: Dialect) -> Any:
        return None  # an int binds as it is; PostgreSQL casts it to the column's numeric

    def column_expression(self, column: ColumnElement[int]) -> ColumnElement[int]:
        # Selected as bigint: psycopg reads numeric as a Decimal, ~0.3 us a value, a tenth of
        # a second for each count a year's first fold reads. Every stored count fits 64 bits
        # (scrub.storable drops larger integers). On SQLite the cast changes nothing. SQLAlchemy
        # casts wherever the column is selected, a subquery's column and a sum() included.
        return cast(column, BigInteger)


class Float32(TypeDecorator[float]):
    """A measured value (a duration, a rate, a reset time) kept to float32's precision, about
    7 significant digits (4 us at 60,000 ms), far finer than a network timing's noise:
    PostgreSQL stores it as real, 4 bytes where double precision takes 8 and its alignment.
    The value bound is the shortest decimal that rounds to the same float32 (61.307, not
    61.3070068359375), on SQLite too; PostgreSQL prints a real as that same shortest decimal
    (extra_float_digits >= 1, its default since version 12, which db.create sets), so both
    databases return the same floats, and JSON shows them as they were measured. A value
    beyond float32's range (an absurd header) is stored as None, as scrub does with integers
    beyond 64 bits."""

    impl = Float
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return REAL()
        return dialect.type_descriptor(Float())

    def bind_processor(self, dialect: Dialect) -> Any:
        return float32


_SINGLE = struct.Struct("<f")


def float32(value: float | None) -> float | None:
    """`value` as Float32 stores it: the shortest decimal that rounds to the same float32 as
    `value`, or None beyond float32's range."""
    if value is None:
        return None
    try:
        single = _SINGLE.pack(value)
    except OverflowError:
        return None
    exact: float = _SINGLE.unpack(single)[0]
    if exact - exact != 0:  # inf or nan: as they are
        return exact
    # Each try is the closest decimal of that many digits ("g" drops trailing zeros, so 6
    # covers fewer); the first that rounds back to the same float32 is the shortest. 9 always
    # does. Most measured values need 7 or 8.
    for digits in (6, 7, 8):
        shortest = float(f"{exact:.{digits}g}")
        if _SINGLE.pack(shortest) == single:
            return shortest
    return float(f"{exact:.9g}")


# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids for years of probes.
Id = BigInteger().with_variant(Integer(), "sqlite")


# A configured target, by name. Its configurations over time are in target_configs.
targets = Table(
    "targets", metadata,
    Column("id", Id, primary_key=True),
    Column("name", String(200), unique=True, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # 'canary': a configured target that monitor probes; 'traffic': the application's own
    # calls through `monitor proxy`, one target per route and requested model ("route/model").
    # Canary reads (status, reports, /metrics, badges) filter on this, never probe by probe.
    Column("kind", String(10), server_default=text("'canary'"), nullable=False),
)


class TargetKind:
    """targets.kind. Stored as-is."""

    CANARY = "canary"
    TRAFFIC = "traffic"


# One effective configuration of a target (never the key); a new hash marks a change.
target_configs = Table(
    "target_configs", metadata,
    Column("id", Id, primary_key=True),
    Column("target_id", ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("config", Json, nullable=False),
    Column("first_seen_at", UtcDateTime, nullable=False),
    UniqueConstraint("target_id", "config_hash"),
)

# A request body, stored once however many probes sent it (canaries repeat exactly).
request_payloads = Table(
    "request_payloads", metadata,
    Column("id", Id, primary_key=True),
    Column("sha256", String(64), unique=True, nullable=False),
    Column("payload", Json, nullable=False),
)

# The values a target's probes repeat from one to the next: what the upstream says it is (API
# version, organization, model, fingerprint, service tier), the account's limits, how the
# answer ended. Stored once per distinct combination, keyed by a sha256 of the values
# (shared.facet_digest) and referenced by probes.facet_id: ~70 bytes a probe less
# (docs/benchmarks.md, revision 0014). Values that vary from probe to probe (remaining
# quota, usage) stay on probes, and the answer has a table of its own (probe_answers), so a
# probe whose facet is new each time costs one small row more, not a row as large as itself.
# Rows are never deleted.
probe_facets = Table(
    "probe_facets", metadata,
    Column("id", Id, primary_key=True),
    Column("sha256", String(64), unique=True, nullable=False),
    Column("openai_version", Text),
    Column("openai_organization", Text),
    Column("model", Text),
    Column("system_fingerprint", Text),
    Column("service_tier", Text),
    Column("finish_reason", Text),  # of the first choice
    Column("ratelimit_limit_requests", BigInteger),
    Column("ratelimit_limit_tokens", BigInteger),
    Column("ratelimit_limit_input_tokens", BigInteger),
    Column("ratelimit_limit_output_tokens", BigInteger),
)
# The facet's values, in the order their digest takes them.
FACET_FIELDS = tuple(column.key for column in probe_facets.columns
                     if column.key not in ("id", "sha256"))

# An answer (a probe's choices) that came more than once, stored once, keyed by a sha256 of
# its canonical JSON (shared.answer_digest): a canary mostly gets the same answer every
# time. An answer not seen repeating stays on its probe (probes.choices), so traffic whose
# answers all differ costs nothing more (shared.AnswerIds decides). Rows are never deleted.
probe_answers = Table(
    "probe_answers", metadata,
    Column("id", Id, primary_key=True),
    Column("sha256", String(64), unique=True, nullable=False),
    Column("choices", Json, nullable=False),
)

# One canary call: queryable columns for every captured field, plus the raw exchange.
probes = Table(
    "probes", metadata,
    Column("id", Id, primary_key=True),
    # The probe's own id, fixed before it is stored: a spooled result replayed twice is one row.
    # 32 hex digits, stored as 16 bytes (HexUuid).
    Column("uid", HexUuid, unique=True, nullable=False),
    Column("target_id", Integer, ForeignKey("targets.id", ondelete="CASCADE"),
           nullable=False),
    Column("target_config_id", Integer, ForeignKey("target_configs.id"), nullable=False),
    Column("request_payload_id", ForeignKey("request_payloads.id"), nullable=False),
    # What it has in common with the target's other probes (probe_facets, above).
    Column("facet_id", Integer, ForeignKey("probe_facets.id"), nullable=False),
    Column("started_at", UtcMicros, nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("error_kind", String(40)),
    Column("error_detail", Text),
    Column("http_status", SmallInteger),
    Column("time_to_headers_ms", Float32),
    Column("total_ms", Float32),
    Column("time_to_first_token_ms", Float32),
    Column("output_tokens_per_s", Float32),
    Column("openai_processing_ms", Float32),
    Column("x_request_id", UpstreamId),
    Column("retry_after_s", Float32),
    Column("ratelimit_remaining_requests", BigInteger),
    Column("ratelimit_remaining_tokens", BigInteger),
    Column("ratelimit_reset_requests_s", Float32),
    Column("ratelimit_reset_tokens_s", Float32),
    # Anthropic limits input and output tokens apart (anthropic-ratelimit-input-tokens-*).
    Column("ratelimit_remaining_input_tokens", BigInteger),
    Column("ratelimit_reset_input_tokens_s", Float32),
    Column("ratelimit_remaining_output_tokens", BigInteger),
    Column("ratelimit_reset_output_tokens_s", Float32),
    Column("response_id", UpstreamId),
    Column("response_created_at", UtcSeconds),
    # The answer, here or (when it repeats) in probe_answers: one of the two, or neither.
    Column("choices", JsonOrNull),
    Column("answer_id", ForeignKey("probe_answers.id")),
    Column("stream_chunks", Count),
    Column("prompt_tokens", Count),
    Column("completion_tokens", Count),
    Column("total_tokens", Count),
    Column("cached_tokens", Count),
    Column("prompt_audio_tokens", Count),
    Column("reasoning_tokens", Count),
    Column("completion_audio_tokens", Count),
    Column("accepted_prediction_tokens", Count),
    Column("rejected_prediction_tokens", Count),
    Column("cache_creation_input_tokens", Count),  # Anthropic
    # The headers (already redacted) as JSON and the body exactly as received (SSE bytes for
    # streams), each compressed by store/codec.py against its configuration's dictionary
    # (codec_dictionaries) and this row's x_request_id, response_id and response_created_at:
    # stored once, in those columns, so they are never rewritten (store/blobs.py). The parsed
    # columns above are the ones to query.
    Column("response_headers_zlib", Blob, nullable=False),
    Column("raw_response_zlib", Blob, nullable=False),
    Column("raw_response_bytes", Count, nullable=False),
    # The probe whose stored request this one re-sent (`monitor replay`); None for a canary.
    # Indexed (replays only, above) for finding an original's replays and for export, which
    # carries the link along.
    Column("replay_of", Id, ForeignKey("probes.id", ondelete="SET NULL")),
    # Traffic recorded by `monitor proxy` only (None on canaries and replays): a sha256 of the
    # app's credential (never the credential), so keys can be told apart; the path called
    # when it was not Chat Completions or Messages (stored raw, unparsed); the proxy's own
    # added time; and whether the request or answer body was cut at the route's size cap.
    Column("credential_hash", String(64)),
    Column("request_path", Text),
    Column("proxy_added_ms", Float32),
    Column("request_truncated", Boolean),
    Column("response_truncated", Boolean),
    # Detectors, reports and `monitor probe` read one target's history in time order.
    Index("ix_probes_target_id_started_at", "target_id", "started_at"),
    # Live detection reads a target's probes stored after the last one it folded: without
    # this, PostgreSQL's generic plan for `id > $1` sorts the target's whole history.
    Index("ix_probes_target_id_id", "target_id", "id"),
    # Two partial indexes of replays and one of successful probes: add_partial_indexes().
)

# The canary's own probes: everything but replays, which re-send an old request on demand.
# Rollups, reports, /metrics and detection read only these, so replaying changes no number.
# (Recorded traffic is kept apart a level up: its probes belong to targets of kind 'traffic'.)
CANARY = probes.c.replay_of.is_(None)

# Probes with their facet's values, for readers: select_from() this, then name a facet value
# as probe_facets.c.model (an inner join: every probe has a facet).
PROBES_WITH_FACETS = probes.join(probe_facets, probe_facets.c.id == probes.c.facet_id)
# A probe's answer wherever it is stored (select from PROBES_WITH_ANSWERS, or outer-join
# probe_answers yourself).
CHOICES = func.coalesce(probe_answers.c.choices, probes.c.choices, type_=Json).label("choices")
PROBES_WITH_ANSWERS = PROBES_WITH_FACETS.outerjoin(
    probe_answers, probe_answers.c.id == probes.c.answer_id)
# Where each facet value stood among the probe's columns before revision 0014: readers list
# a probe's fields in that order (`monitor show --json`, export lines), as they did.
_FACETS_BEFORE = {
    "x_request_id": ("openai_version", "openai_organization"),
    "ratelimit_remaining_requests": ("ratelimit_limit_requests", "ratelimit_limit_tokens"),
    "ratelimit_remaining_input_tokens": ("ratelimit_limit_input_tokens",),
    "ratelimit_remaining_output_tokens": ("ratelimit_limit_output_tokens",),
    "choices": ("model", "system_fingerprint", "service_tier", "finish_reason"),
}
# A probe's fields as readers know them (from PROBES_WITH_ANSWERS): every column of probes
# but the references, the facet's values in their old places, and CHOICES for choices.
PROBE_FIELDS: tuple[NamedColumn[Any], ...] = tuple(
    column
    for own in probes.columns if own.key not in ("facet_id", "answer_id")
    for column in (*(probe_facets.c[name] for name in _FACETS_BEFORE.get(own.key, ())),
                   CHOICES if own.key == "choices" else own)
)

# What a configuration's exchanges look like: the headers and body of one of its probes,
# against which the raw bytes of its later probes are compressed (store/codec.py, format 2).
# Never updated and never pruned: every blob naming it needs it.
codec_dictionaries = Table(
    "codec_dictionaries", metadata,
    Column("id", Id, primary_key=True),
    Column("target_config_id", ForeignKey("target_configs.id", ondelete="CASCADE"),
           nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("dictionary", Blob, nullable=False),
    # The recorder finds a configuration's newest dictionary once per process.
    Index("ix_codec_dictionaries_target_config_id", "target_config_id"),
)

# One check's outcome on one canary probe (`CheckOutcome`, a one-line reason when it
# failed). The probe's fingerprint and model are copied in, so pass rates per target, check,
# fingerprint and model are counted from this table alone. Replays store none: `monitor
# replay` evaluates their answers when it shows them.
check_results = Table(
    "check_results", metadata,
    Column("probe_id", Id, ForeignKey("probes.id", ondelete="CASCADE"), primary_key=True),
    Column("check_name", String(64), primary_key=True),
    Column("target_id", ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reason", Text),
    Column("model", Text),
    Column("system_fingerprint", Text),
    # Reports, the dashboard and /metrics count a target's outcomes over a time range.
    Index("ix_check_results_target_id_started_at", "target_id", "started_at"),
)

# One scheduled slot of one target: claimed by exactly one instance, then probed or
# skipped (with the reason), once its time came; or reserved ahead by a 429 backoff, and
# skipped when its time comes (store/leases.py). The unique (target, slot) pair is how
# several daemons on one PostgreSQL share the work without consensus of their own.
slots = Table(
    "slots", metadata,
    Column("id", Id, primary_key=True),
    Column("target_id", ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
    Column("slot_at", UtcDateTime, nullable=False),
    Column("instance_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # SlotState
    Column("reason_kind", String(20)),  # SkipKind, for counting
    Column("reason", Text),  # the same in words, for people
    Column("probe_uid", String(32)),
    UniqueConstraint("target_id", "slot_at"),
    # A partial index of skipped slots: add_partial_indexes() below.
)

# A running `monitor run`, alive while its heartbeat is recent.
instances = Table(
    "instances", metadata,
    Column("id", String(64), primary_key=True),
    Column("hostname", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("heartbeat_at", UtcDateTime, nullable=False),
)

# Where live detection stands for one target: the detectors' snapshot after folding every
# probe up to `last_probe_id`. Several daemons share it, so each folds what the others
# stored; a changed `thresholds_hash` means folding the history again.
detector_states = Table(
    "detector_states", metadata,
    Column("target_id", ForeignKey("targets.id", ondelete="CASCADE"), primary_key=True),
    Column("thresholds_hash", String(64), nullable=False),
    Column("last_probe_id", Id, nullable=False),
    # TargetDetector.snapshot() as zlib'd JSON: rewritten after every probe, and a quarter of
    # its JSON size (about 3 of 12 KB); nothing queries inside it.
    Column("state_zlib", Blob, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# A condition that opened or cleared at one probe (a DriftEvent). Unique per probe, so
# folding the same probe twice (a crash before the state was saved) stores it once.
drift_events = Table(
    "drift_events", metadata,
    Column("id", Id, primary_key=True),
    Column("target_id", ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(20), nullable=False),  # DriftKind
    Column("key", Text, nullable=False),  # may embed an upstream value (a fingerprint)
    Column("opened", Boolean, nullable=False),
    Column("severity", String(10), nullable=False),  # Severity
    Column("at", UtcDateTime, nullable=False),
    Column("probe_uid", String(32), nullable=False),  # the probe it happened at
    Column("before", Json, nullable=True),
    Column("after", Json, nullable=True),
    Column("probe_uids", Json, nullable=False),
    Column("explanation", Text, nullable=False),
    UniqueConstraint("probe_uid", "kind", "key", "opened"),
    Index("ix_drift_events_target_id_at", "target_id", "at"),
)

# One alert: a condition that held long enough to open, until it resolved. `pending`
# rows are conditions not yet held for `open_after` probes; they notify nobody.
alerts = Table(
    "alerts", metadata,
    Column("id", Id, primary_key=True),
    Column("target_id", ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("key", Text, nullable=False),  # may embed an upstream value (a fingerprint)
    Column("severity", String(10), nullable=False),
    Column("state", String(10), nullable=False),  # pending | open | resolved
    # Probes in a row the condition has held (pending) or has been clear (open).
    Column("streak", Integer, nullable=False),
    # Times it re-opened within the cooldown, silently, instead of a new alert.
    Column("flaps", Integer, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),  # the condition's first probe
    Column("opened_at", UtcDateTime),
    Column("resolved_at", UtcDateTime),
    Column("before", Json, nullable=True),
    Column("after", Json, nullable=True),
    Column("probe_uids", Json, nullable=False),
    Column("explanation", Text, nullable=False),
    Column("resolution", Text),  # why it cleared
    Column("last_notified_at", UtcDateTime),
    Column("acked_at", UtcDateTime),
    Column("acked_by", String(200)),
    Index("ix_alerts_target_id_kind_key", "target_id", "kind", "key"),
    Index("ix_alerts_state", "state"),
)

# An alert's state change to tell people about, written in the transaction that made
# it. `pending` rows wait to be grouped into a notification; `held` ones arrived during a
# maintenance window; `dropped` ones were outlived by a later change.
outbox = Table(
    "outbox", metadata,
    Column("id", Id, primary_key=True),
    Column("alert_id", ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
    Column("change", String(10), nullable=False),  # opened | resolved | reminder
    Column("created_at", UtcDateTime, nullable=False),
    Column("state", String(10), nullable=False),  # pending | held | grouped | dropped
    Column("note", Text),
    Column("notification_id", ForeignKey("notifications.id", ondelete="SET NULL")),
    Index("ix_outbox_state", "state"),
)

# One message about one or more alert changes (grouped), sent on every channel.
notifications = Table(
    "notifications", metadata,
    Column("id", Id, primary_key=True),
    Column("uid", String(32), unique=True, nullable=False),  # the receivers' idempotency key
    Column("created_at", UtcDateTime, nullable=False),
    Column("change", String(10), nullable=False),
    Column("title", Text, nullable=False),
)

# A notification on one channel: the exact body to send, and how sending it went.
# Delivered once it got a 2xx; retried with backoff until then, across restarts.
deliveries = Table(
    "deliveries", metadata,
    Column("id", Id, primary_key=True),
    Column("notification_id", ForeignKey("notifications.id", ondelete="CASCADE"), nullable=False),
    # "log", or "webhook:"/"slack:" and a hash of the URL (URLs are secrets: never stored).
    Column("channel", String(80), nullable=False),
    Column("destination", String(300), nullable=False),  # the URL, redacted
    Column("body", Json, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime),  # None: finished
    Column("lease_until", UtcDateTime),  # an instance is sending
    Column("delivered_at", UtcDateTime),
    Column("gave_up_at", UtcDateTime),
    Column("last_status", Integer),
    Column("last_error", Text),
    UniqueConstraint("notification_id", "channel"),
    Index("ix_deliveries_next_attempt_at", "next_attempt_at"),
)


def _rollup_columns() -> list[Column[Any]]:
    """One target's probes in one UTC hour or day, folded by store/rollups.py: what reports
    read instead of raw probes. Sketches are monitor.sketch encodings (None: nothing
    measured); `fingerprints` and `models` map each value to [count, first seen, last seen]
    (microseconds since the epoch), so first/last seen outlive raw-probe retention."""
    return [
        Column("id", Id, primary_key=True),
        Column("target_id", ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
        Column("start_at", UtcDateTime, nullable=False),
        Column("probes", Integer, nullable=False),
        Column("ok", Integer, nullable=False),
        Column("errors", Json, nullable=False),  # error_kind -> probes
        # Usage summed over successful probes.
        Column("prompt_tokens", BigInteger, nullable=False),
        Column("completion_tokens", BigInteger, nullable=False),
        Column("total_tokens", BigInteger, nullable=False),
        # Latency of successful probes, and streaming output speed.
        Column("total_ms_sketch", Blob),
        Column("headers_ms_sketch", Blob),
        Column("ttft_ms_sketch", Blob),
        Column("processing_ms_sketch", Blob),
        Column("tokens_per_s_sketch", Blob),
        Column("fingerprints", Json, nullable=False),
        Column("models", Json, nullable=False),
        # The newest probe in the bucket that carried rate-limit headers, and the lowest
        # remaining / limit seen in it.
        Column("limits_at", UtcDateTime),
        Column("limit_requests", BigInteger),
        Column("limit_tokens", BigInteger),
        Column("remaining_requests", BigInteger),
        Column("remaining_tokens", BigInteger),
        Column("min_headroom_requests", Float),
        Column("min_headroom_tokens", Float),
        # The newest failed probe in the bucket.
        Column("last_error_at", UtcDateTime),
        Column("last_error_kind", String(40)),
        Column("last_error_status", SmallInteger),
        Column("last_error_detail", Text),
    ]


# One target's probes in one UTC hour (the columns are described in _rollup_columns).
hourly_rollups = Table(
    "hourly_rollups", metadata,
    *_rollup_columns(),
    UniqueConstraint("target_id", "start_at"),
)

# The same per UTC day. A table of its own: a year's report reads 365 rows per target,
# which sit together here instead of scattered among 24 times as many hours.
daily_rollups = Table(
    "daily_rollups", metadata,
    *_rollup_columns(),
    UniqueConstraint("target_id", "start_at"),
)

# One target's numbers over all its history, for /metrics: a scrape reads this table and
# never the probes, whatever the fleet's size or the history's length.
rollup_totals = Table(
    "rollup_totals", metadata,
    Column("target_id", ForeignKey("targets.id", ondelete="CASCADE"), primary_key=True),
    Column("probes", BigInteger, nullable=False),
    Column("ok", BigInteger, nullable=False),
    Column("errors", Json, nullable=False),
    Column("total_ms_sketch", Blob),
    Column("headers_ms_sketch", Blob),
    Column("ttft_ms_sketch", Blob),
    Column("processing_ms_sketch", Blob),
    # The newest probe, and what the newest successful one said it was.
    Column("newest_at", UtcDateTime),
    Column("newest_ok", Boolean),
    Column("ok_at", UtcDateTime),
    Column("ok_fingerprint", Text),
    Column("ok_model", Text),
    # The newest probe that carried rate-limit headers (as in _rollup_columns).
    Column("limits_at", UtcDateTime),
    Column("limit_requests", BigInteger),
    Column("limit_tokens", BigInteger),
    Column("remaining_requests", BigInteger),
    Column("remaining_tokens", BigInteger),
    # Check outcomes of the probes: check name -> outcome -> probes.
    Column("checks", Json, server_default=text("'{}'"), nullable=False),
)

# How far rollups have folded probes (one row, id 1; locked by each catch_up). Ids up to
# `last_probe_id` were read, except `gaps`: ranges [first, last, noticed at (us)] missing
# when read, because a transaction that took those ids had not committed yet (PostgreSQL
# hands out ids before commit) or rolled back; they are looked for again until they expire.
rollup_state = Table(
    "rollup_state", metadata,
    Column("id", Integer, primary_key=True),
    Column("last_probe_id", Id, nullable=False),
    Column("gaps", Json, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# How far raw-probe retention has got (one row, id 1): every probe started before
# `pruned_before` with id up to `checked_id` has had its raw body and headers emptied.
retention_state = Table(
    "retention_state", metadata,
    Column("id", Integer, primary_key=True),
    Column("pruned_before", UtcDateTime),
    Column("checked_id", Id, nullable=False),
    # Bytes emptied on SQLite since its last VACUUM: what a VACUUM would give back.
    Column("unreclaimed_bytes", BigInteger, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# One batch replay (`monitor replay --target T --since D`): the stored requests it re-sends,
# fixed when it starts, so that running the same command again after an interruption resumes
# it instead of sending anything twice. `open_key` is the command's identity while the run is
# unfinished and None after: at most one open run per command, and a finished one can be
# run afresh.
replay_runs = Table(
    "replay_runs", metadata,
    Column("id", Id, primary_key=True),
    Column("key", String(64), nullable=False),  # sha256 of the command's options
    Column("open_key", String(64), unique=True),
    Column("source_target_id", ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
    Column("destination_target_id", ForeignKey("targets.id", ondelete="CASCADE"),
           nullable=False),
    Column("since_at", UtcDateTime),
    Column("until_at", UtcDateTime),
    Column("max_probes", Integer),  # --limit
    Column("items", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
)

# One stored request of a batch replay. `pending`, then `sending` (claimed, committed
# before the request goes out), then `done` with the replay's probe stored in the same
# transaction. A `sending` item whose process died is never sent again: the request may have
# reached the server.
replay_items = Table(
    "replay_items", metadata,
    Column("id", Id, primary_key=True),
    Column("run_id", ForeignKey("replay_runs.id", ondelete="CASCADE"), nullable=False),
    Column("probe_id", ForeignKey("probes.id", ondelete="CASCADE"), nullable=False),
    # The original's, copied so that a claim is one statement.
    Column("request_payload_id", ForeignKey("request_payloads.id"), nullable=False),
    Column("position", Integer, nullable=False),  # oldest original first
    Column("state", String(10), nullable=False),  # ReplayState
    Column("claimed_at", UtcDateTime),
    Column("replay_probe_id", ForeignKey("probes.id", ondelete="SET NULL")),
    Column("rate_limited", Integer, nullable=False),  # 429s waited out before the answer
    UniqueConstraint("run_id", "probe_id"),
    # Workers claim the run's next pending item in position order.
    Index("ix_replay_items_run_id_state_position", "run_id", "state", "position"),
)


def add_partial_indexes() -> None:
    """Add the partial indexes (a WHERE on SQLite and on PostgreSQL) to the tables above, once.

    Not made with the tables: SQLAlchemy checks a dialect's option by importing that dialect's
    package, and PostgreSQL's imports every PostgreSQL driver's dialect and asyncio (~20 ms),
    which `monitor status` on SQLite should not pay. Queries never need an Index object; what
    creates or compares the schema does, and reads it through store/models.py, which calls
    this (Alembic's env.py, the tests; tests/test_migrations.py compares the result)."""
    if any(index.name == "ix_probes_replay_of" for index in probes.indexes):
        return
    replays = text("replay_of IS NOT NULL")
    # The report lists the replays in its range: this holds only those, so a year's report
    # never looks through a year of canaries to find them.
    Index("ix_probes_replays_target_id_started_at", probes.c.target_id, probes.c.started_at,
          sqlite_where=replays, postgresql_where=replays)
    # An original's replays (export, the probe page). Replays only: a whole index would tempt
    # SQLite to answer `replay_of IS NULL` (every canary read) through it.
    Index("ix_probes_replay_of", probes.c.replay_of,
          sqlite_where=replays, postgresql_where=replays)
    # `monitor sim --recorded` looks up the newest successful answer to one request payload:
    # an index seek by payload, then backwards by id, instead of a scan of every probe. Only
    # successful probes, so without `ok` in each entry (12 bytes less a probe on PostgreSQL).
    # Each database's predicate is the form its planner matches to the query's
    # `ok = true()`: SQLite compares the terms as written, PostgreSQL simplifies `ok = true`.
    Index("ix_probes_ok_request_payload_id_id", probes.c.request_payload_id, probes.c.id,
          sqlite_where=text("ok = 1"), postgresql_where=text("ok"))
    # Reports, `monitor status` and /metrics count skipped slots per target and kind over a
    # range: a partial index holds those few rows only, not the probed ones (one a probe).
    skipped = text("state = 'skipped'")
    Index("ix_slots_skipped_target_id_slot_at", slots.c.target_id, slots.c.slot_at,
          sqlite_where=skipped, postgresql_where=skipped)
