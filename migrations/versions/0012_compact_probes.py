"""compact probes: codec dictionaries, 16-byte uids, created times as unix seconds on SQLite

A new table holds, per target configuration, the headers and body of one of its probes; raw
bodies and headers stored from now on are compressed against it and against the probe's own
request id, response id and created time (store/codec.py, format 2), about a third of their
size before; retention's emptied blobs shrink to 1 and 3 bytes (format 0). Blobs written
before keep their format byte and decode as they did: none is rewritten on upgrade.

probes.uid is stored as its 16 bytes (schema.HexUuid): PostgreSQL's uuid type (the column is
rewritten; every uid is 32 hex digits), a blob on SQLite (converted row by row: SQLite has no
unhex() before 3.41). On SQLite, probes.response_created_at is stored as the unix time from
now on (schema.UtcSeconds), beside the text of older rows.

Downgrading rewrites the blobs in formats 0 and 2 to format 1, the uids and those times to
text: what the code before reads.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 09:00:00.000000
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import monitor.store.models
from monitor.store import codec

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000
ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
BLOB = sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql')


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == 'postgresql':
        op.alter_column('probes', 'uid', type_=postgresql.UUID(as_uuid=False),
                        existing_type=sa.String(length=32), existing_nullable=False,
                        postgresql_using='uid::uuid')
    else:
        _convert_sqlite_uids(connection, "text", bytes.fromhex)
    op.create_table(
        'codec_dictionaries',
        sa.Column('id', ID, nullable=False),
        sa.Column('target_config_id', ID, nullable=False),
        sa.Column('created_at', monitor.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column('dictionary', BLOB, nullable=False),
        sa.ForeignKeyConstraint(['target_config_id'], ['target_configs.id'],
                                name=op.f('fk_codec_dictionaries_target_config_id_target_configs'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_codec_dictionaries')),
    )
    op.create_index('ix_codec_dictionaries_target_config_id', 'codec_dictionaries',
                    ['target_config_id'], unique=False)


def _convert_sqlite_uids(connection: sa.Connection, stored_as: str,
                         convert: Callable[[Any], Any]) -> None:
    """Rewrite the uids stored as `stored_as` (text or blob) with `convert`, in id order."""
    after = 0
    while True:
        rows = connection.execute(sa.text(
            "SELECT id, uid, typeof(uid) AS kind FROM probes WHERE id > :after ORDER BY id "
            f"LIMIT {BATCH * 10}"), {"after": after}).all()
        changed = [{"id": row.id, "uid": convert(row.uid)} for row in rows
                   if row.kind == stored_as]
        if changed:
            connection.execute(sa.text("UPDATE probes SET uid = :uid WHERE id = :id"), changed)
        if len(rows) < BATCH * 10:
            return
        after = rows[-1].id


def downgrade() -> None:
    connection = op.get_bind()
    dictionaries = dict(connection.execute(
        sa.text('SELECT id, dictionary FROM codec_dictionaries')).all())
    probes = sa.table('probes', sa.column('id', ID), sa.column('x_request_id', sa.Text()),
                      sa.column('response_id', sa.Text()),
                      sa.column('response_created_at', monitor.store.models.UtcSeconds()),
                      sa.column('response_headers_zlib', BLOB),
                      sa.column('raw_response_zlib', BLOB))
    after = 0
    while True:
        rows = connection.execute(sa.select(probes).where(probes.c.id > after)
                                  .order_by(probes.c.id).limit(BATCH)).all()
        for row in rows:
            headers, body = bytes(row.response_headers_zlib), bytes(row.raw_response_zlib)
            if headers[0] == 1 and body[0] == 1:
                continue
            context = codec.context(row.x_request_id, row.response_id, row.response_created_at)
            connection.execute(sa.update(probes).where(probes.c.id == row.id).values(
                response_headers_zlib=codec.compress(
                    codec.decode(headers, context, lambda i: bytes(dictionaries[i]))),
                raw_response_zlib=codec.compress(
                    codec.decode(body, context, lambda i: bytes(dictionaries[i])))))
        if len(rows) < BATCH:
            break
        after = rows[-1].id
    if connection.dialect.name == 'postgresql':
        op.alter_column('probes', 'uid', type_=sa.String(length=32),
                        existing_type=postgresql.UUID(as_uuid=False), existing_nullable=False,
                        postgresql_using="replace(uid::text, '-', '')")
    else:
        _convert_sqlite_uids(connection, "blob", bytes.hex)
        connection.execute(sa.text(
            "UPDATE probes SET response_created_at = "
            "strftime('%Y-%m-%d %H:%M:%S.000000', response_created_at, 'unixepoch') "
            "WHERE typeof(response_created_at) = 'integer'"))
    op.drop_index('ix_codec_dictionaries_target_config_id', table_name='codec_dictionaries')
    op.drop_table('codec_dictionaries')
