"""replay links and batch replay runs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 03:54:59.164497
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

import monitor.store.models

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


@contextmanager
def _foreign_keys_off() -> Iterator[None]:
    """SQLite: batch mode copies probes into a new table and drops the old one. With foreign
    keys enforced, that DROP first deletes every probe, which fires the ON DELETE actions of
    the tables that point at probes and looks up each row's children without an index (hours
    on a large history). The copy keeps every row, so nothing needs checking meanwhile."""
    bind = op.get_bind()
    enforced = bind.dialect.name == 'sqlite' and bind.exec_driver_sql('PRAGMA foreign_keys').scalar()
    if enforced:
        bind.exec_driver_sql('PRAGMA foreign_keys=OFF')
    try:
        yield
    finally:
        if enforced:
            bind.exec_driver_sql('PRAGMA foreign_keys=ON')


def upgrade() -> None:
    op.create_table('replay_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('open_key', sa.String(length=64), nullable=True),
    sa.Column('source_target_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('destination_target_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('since_at', monitor.store.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('until_at', monitor.store.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('max_probes', sa.Integer(), nullable=True),
    sa.Column('items', sa.Integer(), nullable=False),
    sa.Column('created_at', monitor.store.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', monitor.store.models.UtcDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['destination_target_id'], ['targets.id'], name=op.f('fk_replay_runs_destination_target_id_targets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['source_target_id'], ['targets.id'], name=op.f('fk_replay_runs_source_target_id_targets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_replay_runs')),
    sa.UniqueConstraint('open_key', name=op.f('uq_replay_runs_open_key'))
    )
    op.create_table('replay_items',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('probe_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('request_payload_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('claimed_at', monitor.store.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('replay_probe_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('rate_limited', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['probe_id'], ['probes.id'], name=op.f('fk_replay_items_probe_id_probes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['replay_probe_id'], ['probes.id'], name=op.f('fk_replay_items_replay_probe_id_probes'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['request_payload_id'], ['request_payloads.id'], name=op.f('fk_replay_items_request_payload_id_request_payloads')),
    sa.ForeignKeyConstraint(['run_id'], ['replay_runs.id'], name=op.f('fk_replay_items_run_id_replay_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_replay_items')),
    sa.UniqueConstraint('run_id', 'probe_id', name=op.f('uq_replay_items_run_id'))
    )
    with op.batch_alter_table('replay_items', schema=None) as batch_op:
        batch_op.create_index('ix_replay_items_run_id_state_position', ['run_id', 'state', 'position'], unique=False)

    with _foreign_keys_off(), op.batch_alter_table('probes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('replay_of', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.create_index(batch_op.f('ix_probes_replay_of'), ['replay_of'], unique=False)
        batch_op.create_index('ix_probes_request_payload_id_ok_id', ['request_payload_id', 'ok', 'id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_probes_replay_of_probes'), 'probes', ['replay_of'], ['id'], ondelete='SET NULL')


def downgrade() -> None:
    with _foreign_keys_off(), op.batch_alter_table('probes', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_probes_replay_of_probes'), type_='foreignkey')
        batch_op.drop_index('ix_probes_request_payload_id_ok_id')
        batch_op.drop_index(batch_op.f('ix_probes_replay_of'))
        batch_op.drop_column('replay_of')

    with op.batch_alter_table('replay_items', schema=None) as batch_op:
        batch_op.drop_index('ix_replay_items_run_id_state_position')

    op.drop_table('replay_items')
    op.drop_table('replay_runs')
