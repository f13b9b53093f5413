"""unbounded upstream values: text for every string an upstream sends, bigint for its counts

A model name or fingerprint of 300 characters, an `openai-version` over 40 or a token count
of 2^40 made PostgreSQL refuse the probe's INSERT. What an upstream sends is stored as sent;
drift event and alert keys embed such values (`retired:<fingerprint>`), so they are text too.

On PostgreSQL varchar to text needs no rewrite; the integer columns become bigint in one
ALTER TABLE, so probes is rewritten once. SQLite does not enforce either limit, but its
schema says what the models say: batch mode recreates the tables, foreign keys off.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00.000000
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (column, length before) of probes' upstream strings.
PROBE_STRINGS = [
    ('openai_version', 40),
    ('openai_organization', 200),
    ('x_request_id', 200),
    ('response_id', 200),
    ('model', 200),
    ('system_fingerprint', 200),
    ('service_tier', 40),
    ('finish_reason', 40),
]
# (column, nullable) of probes' counts, integer before.
PROBE_COUNTS = [
    ('stream_chunks', True),
    ('prompt_tokens', True),
    ('completion_tokens', True),
    ('total_tokens', True),
    ('cached_tokens', True),
    ('prompt_audio_tokens', True),
    ('reasoning_tokens', True),
    ('completion_audio_tokens', True),
    ('accepted_prediction_tokens', True),
    ('rejected_prediction_tokens', True),
    ('raw_response_bytes', False),
]
KEY_TABLES = ['drift_events', 'alerts']
KEY_LENGTH_BEFORE = 300


@contextmanager
def _foreign_keys_off() -> Iterator[None]:
    """SQLite: batch mode copies the table and drops the old one; with foreign keys enforced
    that DROP fires the ON DELETE actions of the tables pointing at it (see 0006)."""
    bind = op.get_bind()
    enforced = bind.dialect.name == 'sqlite' and bind.exec_driver_sql('PRAGMA foreign_keys').scalar()
    if enforced:
        bind.exec_driver_sql('PRAGMA foreign_keys=OFF')
    try:
        yield
    finally:
        if enforced:
            bind.exec_driver_sql('PRAGMA foreign_keys=ON')


def _retype(unbounded: bool) -> None:
    bind = op.get_bind()
    strings = [(c, sa.String(length=n), sa.Text()) for c, n in PROBE_STRINGS]
    counts = [(c, sa.Integer(), sa.BigInteger()) for c, _ in PROBE_COUNTS]
    changes = [(c, new, old) if unbounded else (c, old, new) for c, old, new in strings + counts]
    if bind.dialect.name == 'postgresql':
        # One statement: each ALTER of an integer column on its own would rewrite the table.
        clauses = ', '.join(
            f'ALTER COLUMN {column} TYPE {new.compile(dialect=bind.dialect)}'
            for column, new, _ in changes
        )
        op.execute(f'ALTER TABLE probes {clauses}')
    else:
        nullable = dict(PROBE_COUNTS)
        with _foreign_keys_off(), op.batch_alter_table('probes', schema=None) as batch_op:
            for column, new, old in changes:
                batch_op.alter_column(column, existing_type=old, type_=new,
                                      existing_nullable=nullable.get(column, True))
    key_old, key_new = sa.String(length=KEY_LENGTH_BEFORE), sa.Text()
    if not unbounded:
        key_old, key_new = key_new, key_old
    for table in KEY_TABLES:
        with _foreign_keys_off(), op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column('key', existing_type=key_old, type_=key_new,
                                  existing_nullable=False)


def upgrade() -> None:
    _retype(unbounded=True)


def downgrade() -> None:
    # Fails on PostgreSQL if a longer value or a count beyond 2^31 was stored since.
    _retype(unbounded=False)
