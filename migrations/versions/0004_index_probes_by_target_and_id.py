"""index probes by target and id; detector state compressed

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 03:27:01.601959
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BLOB = sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql')
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('probes', schema=None) as batch_op:
        batch_op.create_index('ix_probes_target_id_id', ['target_id', 'id'], unique=False)
    # Saved detector states are a cache of folding the stored probes: dropping them makes
    # each target rebuild its state from history at its next probe, without alerting.
    op.execute('DELETE FROM detector_states')
    with op.batch_alter_table('detector_states', schema=None) as batch_op:
        batch_op.drop_column('state')
        batch_op.add_column(sa.Column('state_zlib', BLOB, nullable=False))


def downgrade() -> None:
    op.execute('DELETE FROM detector_states')
    with op.batch_alter_table('detector_states', schema=None) as batch_op:
        batch_op.drop_column('state_zlib')
        batch_op.add_column(sa.Column('state', JSON, nullable=False))
    with op.batch_alter_table('probes', schema=None) as batch_op:
        batch_op.drop_index('ix_probes_target_id_id')
