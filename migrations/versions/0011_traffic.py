"""Traffic recorded by `monitor proxy`: traffic targets, and what only traffic carries

`targets.kind` tells a configured canary ('canary', every existing row) from the application's
own calls recorded by the proxy ('traffic', one target per route and requested model), so that
canary reads filter whole targets and never look at probes one by one. Traffic probes are
stored as probes of those targets, with five nullable columns of their own: the credential's
hash, the path called when it was not a chat endpoint, the proxy's added time, and whether
either body was cut at the route's size cap.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 09:00:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = [
    ('credential_hash', sa.String(length=64)),
    ('request_path', sa.Text()),
    ('proxy_added_ms', sa.Float()),
    ('request_truncated', sa.Boolean()),
    ('response_truncated', sa.Boolean()),
]


def upgrade() -> None:
    # A plain ADD COLUMN on both engines: SQLite takes one with a constant default, and a
    # batch (the table copied and dropped) would cascade-delete every row that refers to a
    # target (slots, alerts, rollups) while foreign keys are on.
    op.add_column('targets', sa.Column('kind', sa.String(length=10),
                                       server_default=sa.text("'canary'"), nullable=False))
    with op.batch_alter_table('probes', schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    for name, _ in reversed(COLUMNS):
        op.drop_column('probes', name)
    # A plain DROP COLUMN (SQLite has one since 3.35), for the reason given in upgrade().
    op.drop_column('targets', 'kind')
