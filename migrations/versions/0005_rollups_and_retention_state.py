"""rollups and retention state

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 03:40:23.467446
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import monitor.store.models

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # No data to move: the first catch_up finds the state row missing and folds the stored
    # history into rollups from probe id 0, a batch per transaction.
    op.create_table('retention_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pruned_before', monitor.store.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('checked_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('unreclaimed_bytes', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', monitor.store.models.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retention_state'))
    )
    op.create_table('rollup_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('last_probe_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('gaps', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('updated_at', monitor.store.models.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollup_state'))
    )
    op.create_table('rollup_totals',
    sa.Column('target_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('probes', sa.BigInteger(), nullable=False),
    sa.Column('ok', sa.BigInteger(), nullable=False),
    sa.Column('errors', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('total_ms_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('headers_ms_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('ttft_ms_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('processing_ms_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.ForeignKeyConstraint(['target_id'], ['targets.id'], name=op.f('fk_rollup_totals_target_id_targets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('target_id', name=op.f('pk_rollup_totals'))
    )
    op.create_table('daily_rollups',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('target_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('start_at', monitor.store.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('probes', sa.Integer(), nullable=False),
    sa.Column('ok', sa.Integer(), nullable=False),
    sa.Column('errors', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('total_tokens', sa.BigInteger(), nullable=False),
    sa.Column('total_ms_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('headers_ms_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('ttft_ms_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('processing_ms_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('tokens_per_s_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('fingerprints', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('models', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('limits_at', monitor.store.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('limit_requests', sa.BigInteger(), nullable=True),
    sa.Column('limit_tokens', sa.BigInteger(), nullable=True),
    sa.Column('remaining_requests', sa.BigInteger(), nullable=True),
    sa.Column('remaining_tokens', sa.BigInteger(), nullable=True),
    sa.Column('min_headroom_requests', sa.Float(), nullable=True),
    sa.Column('min_headroom_tokens', sa.Float(), nullable=True),
    sa.Column('last_error_at', monitor.store.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('last_error_kind', sa.String(length=40), nullable=True),
    sa.Column('last_error_status', sa.SmallInteger(), nullable=True),
    sa.Column('last_error_detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['target_id'], ['targets.id'], name=op.f('fk_daily_rollups_target_id_targets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_daily_rollups')),
    sa.UniqueConstraint('target_id', 'start_at', name=op.f('uq_daily_rollups_target_id'))
    )
    op.create_table('hourly_rollups',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('target_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('start_at', monitor.store.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('probes', sa.Integer(), nullable=False),
    sa.Column('ok', sa.Integer(), nullable=False),
    sa.Column('errors', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('total_tokens', sa.BigInteger(), nullable=False),
    sa.Column('total_ms_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('headers_ms_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('ttft_ms_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('processing_ms_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('tokens_per_s_sketch', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('fingerprints', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('models', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('limits_at', monitor.store.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('limit_requests', sa.BigInteger(), nullable=True),
    sa.Column('limit_tokens', sa.BigInteger(), nullable=True),
    sa.Column('remaining_requests', sa.BigInteger(), nullable=True),
    sa.Column('remaining_tokens', sa.BigInteger(), nullable=True),
    sa.Column('min_headroom_requests', sa.Float(), nullable=True),
    sa.Column('min_headroom_tokens', sa.Float(), nullable=True),
    sa.Column('last_error_at', monitor.store.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('last_error_kind', sa.String(length=40), nullable=True),
    sa.Column('last_error_status', sa.SmallInteger(), nullable=True),
    sa.Column('last_error_detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['target_id'], ['targets.id'], name=op.f('fk_hourly_rollups_target_id_targets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hourly_rollups')),
    sa.UniqueConstraint('target_id', 'start_at', name=op.f('uq_hourly_rollups_target_id'))
    )


def downgrade() -> None:
    op.drop_table('hourly_rollups')
    op.drop_table('daily_rollups')
    op.drop_table('rollup_totals')
    op.drop_table('rollup_state')
    op.drop_table('retention_state')
