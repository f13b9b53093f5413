"""check results: every check's outcome on every canary probe (quality canaries)

One row per probe and check: the outcome (pass, fail, not_applicable), a one-line reason for a
failure, and the probe's model and fingerprint copied in, so that pass rates per target, check,
fingerprint and model are counted from this table and its (target_id, started_at) index alone.
Probes stored before have no checks, so nothing is back-filled (`monitor detect --since`
evaluates stored answers against the current checks when asked).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 06:00:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import monitor.store.models

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'check_results',
        sa.Column('probe_id', ID, nullable=False),
        sa.Column('check_name', sa.String(length=64), nullable=False),
        sa.Column('target_id', ID, nullable=False),
        sa.Column('started_at', monitor.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('model', sa.Text(), nullable=True),
        sa.Column('system_fingerprint', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['probe_id'], ['probes.id'],
                                name=op.f('fk_check_results_probe_id_probes'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['target_id'], ['targets.id'],
                                name=op.f('fk_check_results_target_id_targets'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('probe_id', 'check_name', name=op.f('pk_check_results')),
    )
    op.create_index('ix_check_results_target_id_started_at', 'check_results',
                    ['target_id', 'started_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_check_results_target_id_started_at', table_name='check_results')
    op.drop_table('check_results')
