"""probe facets and answers: the values a target's probes repeat, stored once and referenced

openai_version, openai_organization, model, system_fingerprint, service_tier, finish_reason
and the four rate limits move from probes to probe_facets, one row per distinct combination
keyed by the sha256 of the values (shared.facet_digest, computed the same way here), and
each probe gets facet_id. An answer (choices) stored on more than one probe moves to
probe_answers (keyed by shared.answer_digest) and those probes get answer_id; an answer
stored once stays where it is, as the Recorder leaves answers that do not repeat.

The upgrade reads probes in id order, batch by batch, creating each new facet's and repeated
answer's row as it first appears, and sets the references with one UPDATE per facet or
answer and batch (a canary has a handful of each, so a few statements per 10,000 probes).
Then the columns go: SQLite
recreates the table (batch mode, foreign keys off as in 0007; the partial indexes are made
again after, as a table copy cannot be trusted to keep their WHERE); PostgreSQL drops them in
place (their bytes are freed as rows are rewritten, or at once by VACUUM FULL).

Downgrading puts the values and answers back on every probe and drops the tables.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 14:00:00.000000
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import op

from monitor.store.models import Json

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 10_000
# In the order the digest takes them (schema.FACET_FIELDS).
FACETS = [
    ('openai_version', sa.Text()),
    ('openai_organization', sa.Text()),
    ('model', sa.Text()),
    ('system_fingerprint', sa.Text()),
    ('service_tier', sa.Text()),
    ('finish_reason', sa.Text()),
    ('ratelimit_limit_requests', sa.BigInteger()),
    ('ratelimit_limit_tokens', sa.BigInteger()),
    ('ratelimit_limit_input_tokens', sa.BigInteger()),
    ('ratelimit_limit_output_tokens', sa.BigInteger()),
]
NAMES = [name for name, _ in FACETS]
# Made again after SQLite's table copy: (name, columns, SQLite's WHERE, PostgreSQL's).
PARTIAL_INDEXES = [
    ('ix_probes_replays_target_id_started_at', ['target_id', 'started_at'],
     'replay_of IS NOT NULL', 'replay_of IS NOT NULL'),
    ('ix_probes_replay_of', ['replay_of'], 'replay_of IS NOT NULL', 'replay_of IS NOT NULL'),
    ('ix_probes_ok_request_payload_id_id', ['request_payload_id', 'id'], 'ok = 1', 'ok'),
]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(value: Any) -> str:
    """shared.facet_digest (of a list) and shared.answer_digest, as of this revision."""
    return hashlib.sha256(_canonical(value).encode()).hexdigest()


def _foreign_keys_off() -> None:
    """SQLite: batch mode copies probes and drops the old table; with foreign keys enforced
    that DROP fires the ON DELETE actions of every table pointing at probes (replay_of,
    replay_items, check_results: see 0006, 0007). The pragma is a no-op inside a transaction,
    and one is open here (this revision's own writes, or an earlier revision's in the same
    run), so the revisions before are committed first (each stamped, so a failure here
    leaves the database at 0013). Enforcement stays off for the rest of the run: its
    connection is thrown away after, and db.create turns it on for every new one."""
    if op.get_bind().dialect.name != 'sqlite':
        return
    with op.get_context().autocommit_block():
        op.execute('PRAGMA foreign_keys=OFF')


@contextmanager
def _partial_indexes_remade() -> Iterator[None]:
    """SQLite: the partial indexes dropped before a table copy and made again after it."""
    if op.get_bind().dialect.name != 'sqlite':
        yield
        return
    for name, _, _, _ in PARTIAL_INDEXES:
        op.drop_index(name, table_name='probes')
    yield
    for name, columns, sqlite_where, postgresql_where in PARTIAL_INDEXES:
        op.create_index(name, 'probes', columns, unique=False,
                        sqlite_where=sa.text(sqlite_where),
                        postgresql_where=sa.text(postgresql_where))


def upgrade() -> None:
    _foreign_keys_off()
    id_type = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.create_table(
        'probe_facets',
        sa.Column('id', id_type, nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        *[sa.Column(name, type_, nullable=True) for name, type_ in FACETS],
        sa.PrimaryKeyConstraint('id', name=op.f('pk_probe_facets')),
        sa.UniqueConstraint('sha256', name=op.f('uq_probe_facets_sha256')),
    )
    op.create_table(
        'probe_answers',
        sa.Column('id', id_type, nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('choices', Json(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_probe_answers')),
        sa.UniqueConstraint('sha256', name=op.f('uq_probe_answers_sha256')),
    )
    op.add_column('probes', sa.Column('facet_id', id_type, nullable=True))
    op.add_column('probes', sa.Column('answer_id', id_type, nullable=True))
    connection = op.get_bind()
    _fill(connection)
    with _partial_indexes_remade(), op.batch_alter_table('probes', schema=None) as batch_op:
        batch_op.alter_column('facet_id', existing_type=id_type, nullable=False)
        batch_op.create_foreign_key(op.f('fk_probes_facet_id_probe_facets'), 'probe_facets',
                                    ['facet_id'], ['id'])
        batch_op.create_foreign_key(op.f('fk_probes_answer_id_probe_answers'), 'probe_answers',
                                    ['answer_id'], ['id'])
        for name in NAMES:
            batch_op.drop_column(name)


def _fill(connection: sa.Connection) -> None:
    """Create every distinct facet and every repeated answer, and point each probe at its
    own."""
    facets = sa.table('probe_facets', sa.column('id'), sa.column('sha256'),
                      *[sa.column(name) for name in NAMES])
    answers = sa.table('probe_answers', sa.column('id'), sa.column('sha256'),
                       sa.column('choices', Json()))
    probes = sa.table('probes', sa.column('id'), sa.column('choices', Json()),
                      *[sa.column(name) for name in NAMES])
    # The answers on more than one probe, by their canonical JSON: grouped by the database
    # (jsonb on PostgreSQL, the stored text on SQLite), so only those come to Python.
    repeated = {_canonical(choices) for choices in connection.execute(
        sa.select(probes.c.choices).where(probes.c.choices.is_not(None))
        .group_by(probes.c.choices).having(sa.func.count() > 1)).scalars()}
    known: dict[tuple[Any, ...], int] = {}
    known_answers: dict[str, int] = {}
    after = 0
    while True:
        rows = connection.execute(
            sa.select(probes.c.id, probes.c.choices, *[probes.c[name] for name in NAMES])
            .where(probes.c.id > after).order_by(probes.c.id).limit(BATCH)).all()
        by_facet: dict[int, list[int]] = {}
        by_answer: dict[int, list[int]] = {}
        for probe_id, choices, *values in rows:
            key = tuple(values)
            facet_id = known.get(key)
            if facet_id is None:
                facet_id = known[key] = connection.execute(
                    sa.insert(facets).values(sha256=_digest(list(key)), **dict(zip(NAMES, key)))
                    .returning(facets.c.id)).scalar_one()
            by_facet.setdefault(facet_id, []).append(probe_id)
            text = None if choices is None else _canonical(choices)
            if text in repeated:
                answer_id = known_answers.get(text)
                if answer_id is None:
                    answer_id = known_answers[text] = connection.execute(
                        sa.insert(answers).values(sha256=_digest(choices), choices=choices)
                        .returning(answers.c.id)).scalar_one()
                by_answer.setdefault(answer_id, []).append(probe_id)
        for column, found in (('facet_id', by_facet), ('answer_id', by_answer)):
            moved = ", choices = NULL" if column == 'answer_id' else ""
            for reference, ids in found.items():
                connection.execute(
                    sa.text(f"UPDATE probes SET {column} = :reference{moved} WHERE id IN :ids")
                    .bindparams(sa.bindparam('ids', expanding=True)),
                    {"reference": reference, "ids": ids})
        if len(rows) < BATCH:
            return
        after = rows[-1].id


def downgrade() -> None:
    _foreign_keys_off()
    with op.batch_alter_table('probes', schema=None) as batch_op:
        for name, type_ in FACETS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    op.execute(
        f"UPDATE probes SET ({', '.join(NAMES)}) = "
        f"(SELECT {', '.join(NAMES)} FROM probe_facets WHERE probe_facets.id = probes.facet_id)")
    op.execute("UPDATE probes SET choices = (SELECT choices FROM probe_answers "
               "WHERE probe_answers.id = probes.answer_id) WHERE answer_id IS NOT NULL")
    with _partial_indexes_remade(), op.batch_alter_table('probes', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('fk_probes_facet_id_probe_facets'), type_='foreignkey')
        batch_op.drop_constraint(op.f('fk_probes_answer_id_probe_answers'), type_='foreignkey')
        batch_op.drop_column('facet_id')
        batch_op.drop_column('answer_id')
    op.drop_table('probe_answers')
    op.drop_table('probe_facets')
