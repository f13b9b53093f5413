"""skip kinds and canary-only rollups: slots.reason_kind, and rollups refolded without replays

A skipped slot gets a stable kind beside its reason in words (`rate_limited`, `budget_spent`,
`missed`), which reports, `monitor status` and /metrics count; the rows already skipped get theirs
from the reason the daemon wrote (every reason it ever wrote starts with one of the phrases
below). A partial index holds the skipped rows only, for those counts; another holds the
replays only, which the report now lists in a section of their own.

The index on `probes.replay_of` becomes partial too (replays only). Whole, it held an entry for
every canary, and SQLite, asked for a target's canaries (`replay_of IS NULL`) in a time range,
could walk it instead of (target_id, started_at): 23 ms instead of a fraction of one for the
last hour of 20 targets, growing with the history. Lookups of an original's replays compare
`replay_of` with a value, which the partial index answers.

Rollups now fold the canary's probes only, not replays. Where a database holds replays its
rollups counted them, so every rollup row and the fold watermark are deleted: the next
`rollups.catch_up` (the daemon's, or `monitor report`'s) folds the history again, at about
30,000 probes a second. Without replays the rollups are already right and are kept.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 10:00:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SKIPPED = sa.text("state = 'skipped'")
REPLAYS = sa.text('replay_of IS NOT NULL')
ROLLUP_TABLES = ['hourly_rollups', 'daily_rollups', 'rollup_totals', 'rollup_state']


def _refold_if_replays() -> None:
    """Empty the rollups (they refold from the probes) if any replay was folded into them."""
    bind = op.get_bind()
    if bind.execute(sa.text('SELECT 1 FROM probes WHERE replay_of IS NOT NULL LIMIT 1')).first():
        for table in ROLLUP_TABLES:
            op.execute(f'DELETE FROM {table}')


def upgrade() -> None:
    with op.batch_alter_table('slots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reason_kind', sa.String(length=20), nullable=True))
    op.execute(
        "UPDATE slots SET reason_kind = CASE"
        " WHEN reason LIKE 'rate limited%' THEN 'rate_limited'"
        " WHEN reason LIKE 'daily % budget spent%' THEN 'budget_spent'"
        " ELSE 'missed' END"
        " WHERE state = 'skipped'")
    op.create_index('ix_slots_skipped_target_id_slot_at', 'slots', ['target_id', 'slot_at'],
                    unique=False, sqlite_where=SKIPPED, postgresql_where=SKIPPED)
    op.create_index('ix_probes_replays_target_id_started_at', 'probes',
                    ['target_id', 'started_at'], unique=False, sqlite_where=REPLAYS,
                    postgresql_where=REPLAYS)
    op.drop_index('ix_probes_replay_of', table_name='probes')
    op.create_index('ix_probes_replay_of', 'probes', ['replay_of'], unique=False,
                    sqlite_where=REPLAYS, postgresql_where=REPLAYS)
    _refold_if_replays()


def downgrade() -> None:
    # Before 0008 a backoff's future slots were written as skipped at once.
    op.execute("UPDATE slots SET state = 'skipped' WHERE state = 'reserved'")
    op.drop_index('ix_probes_replay_of', table_name='probes')
    op.create_index('ix_probes_replay_of', 'probes', ['replay_of'], unique=False)
    op.drop_index('ix_probes_replays_target_id_started_at', table_name='probes',
                  sqlite_where=REPLAYS, postgresql_where=REPLAYS)
    op.drop_index('ix_slots_skipped_target_id_slot_at', table_name='slots',
                  sqlite_where=SKIPPED, postgresql_where=SKIPPED)
    with op.batch_alter_table('slots', schema=None) as batch_op:
        batch_op.drop_column('reason_kind')
    # The code before 0008 folds replays too: refolding keeps its rollups consistent.
    _refold_if_replays()
