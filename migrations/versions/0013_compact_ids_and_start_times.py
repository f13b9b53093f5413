"""compact probes: upstream ids packed, start times as integer microseconds on SQLite, and
the recorded-answer index on successful probes only

Every probe's request id (OpenAI's `req_` and 32 hex digits) and response id (`chatcmpl-` and
29 alphanumerics) are stored as a shape byte and their digits packed as a number
(schema.UpstreamId, store/upstream_ids.py): 18 and 24 bytes instead of 36 and 38, anything
else as a tag and its UTF-8. PostgreSQL's columns become bytea; SQLite keeps its TEXT columns
and stores blobs in them. Every row is converted, so an equality lookup finds old rows as new
ones.

On SQLite, probes.started_at becomes integer microseconds since 1970 (schema.UtcMicros): 8
bytes instead of 26, in the row and in ix_probes_target_id_started_at. Every row is converted
(one UPDATE): a range mixing text and integers would compare wrongly.

The index of probes by (request_payload_id, ok, id) becomes a partial index of the successful
ones by (request_payload_id, id), the only ones its reader (`monitor sim --recorded`) looks for.

Downgrading turns the ids and times back into the text the code before reads and restores the
index.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 11:30:00.000000
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from monitor.store import upstream_ids

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 10_000
COLUMNS = ('x_request_id', 'response_id')


def upgrade() -> None:
    connection = op.get_bind()
    op.drop_index('ix_probes_request_payload_id_ok_id', table_name='probes')
    op.create_index('ix_probes_ok_request_payload_id_id', 'probes', ['request_payload_id', 'id'],
                    unique=False, sqlite_where=sa.text('ok = 1'),
                    postgresql_where=sa.text('ok'))
    if connection.dialect.name == 'postgresql':
        # One statement, so the table is rewritten once. Valid in the new form at once (tag 0,
        # verbatim), then packed below.
        connection.exec_driver_sql("ALTER TABLE probes " + ", ".join(
            f"ALTER COLUMN {name} TYPE bytea USING '\\x00'::bytea || convert_to({name}, 'UTF8')"
            for name in COLUMNS))
        _rewrite(connection, lambda value: upstream_ids.encode(upstream_ids.decode(value)))
    else:
        _rewrite(connection, lambda value: value if isinstance(value, bytes)
                 else upstream_ids.encode(value))
        # UtcDateTime's text is 'YYYY-MM-DD HH:MM:SS.ffffff'; a fraction, when there is one,
        # is padded to its six digits.
        connection.exec_driver_sql(
            "UPDATE probes SET started_at = "
            "CAST(strftime('%s', substr(started_at, 1, 19)) AS INTEGER) * 1000000 + "
            "CAST(substr(substr(started_at, 21) || '000000', 1, 6) AS INTEGER) "
            "WHERE typeof(started_at) = 'text'")


def downgrade() -> None:
    connection = op.get_bind()
    op.drop_index('ix_probes_ok_request_payload_id_id', table_name='probes',
                  sqlite_where=sa.text('ok = 1'), postgresql_where=sa.text('ok'))
    op.create_index('ix_probes_request_payload_id_ok_id', 'probes',
                    ['request_payload_id', 'ok', 'id'], unique=False)
    if connection.dialect.name == 'postgresql':
        connection.exec_driver_sql("ALTER TABLE probes " + ", ".join(
            f"ALTER COLUMN {name} TYPE text USING encode({name}, 'hex')" for name in COLUMNS))
        _rewrite(connection, lambda value: upstream_ids.decode(bytes.fromhex(value)))
    else:
        _rewrite(connection, lambda value: value if isinstance(value, str)
                 else upstream_ids.decode(value))
        # SQLite's % truncates towards zero: the fraction modulo, for times before 1970.
        fraction = "((started_at % 1000000 + 1000000) % 1000000)"
        connection.exec_driver_sql(
            "UPDATE probes SET started_at = strftime('%Y-%m-%d %H:%M:%S', "
            f"(started_at - {fraction}) / 1000000, 'unixepoch') || printf('.%06d', {fraction}) "
            "WHERE typeof(started_at) = 'integer'")


def _rewrite(connection: sa.Connection, convert: Callable[[Any], Any]) -> None:
    """Set both columns of every probe to `convert` of their value (None stays None), in id
    order, updating only the rows that change."""
    after = 0
    while True:
        rows = connection.execute(sa.text(
            f"SELECT id, {', '.join(COLUMNS)} FROM probes WHERE id > :after ORDER BY id "
            f"LIMIT {BATCH}"), {"after": after}).all()
        changed = []
        for row in rows:
            values = {name: None if row[i + 1] is None else convert(row[i + 1])
                      for i, name in enumerate(COLUMNS)}
            if any(values[name] != row[i + 1] for i, name in enumerate(COLUMNS)):
                changed.append({"id": row.id, **values})
        if changed:
            connection.execute(sa.text(
                f"UPDATE probes SET {', '.join(f'{n} = :{n}' for n in COLUMNS)} "
                "WHERE id = :id"), changed)
        if len(rows) < BATCH:
            return
        after = rows[-1].id
