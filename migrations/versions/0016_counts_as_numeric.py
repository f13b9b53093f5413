"""counts as numeric on PostgreSQL: a probe's token counts, stream chunks and body length

PostgreSQL stores bigint in 8 bytes, 8-aligned, whatever the value; a canary's eleven counts
are nearly all 0 (the usage details) or under 10,000. NUMERIC takes 3 bytes for 0 and 5 up to
9,999 (schema.Count): about 40 bytes less a probe. Python reads both as int. One ALTER
rewrites the table once. SQLite is unchanged: its INTEGER is already as long as the value.

Downgrading turns them back into bigint (a count beyond 64 bits, which numeric allows, would
not fit and stops the downgrade).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 22:40:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = (
    'stream_chunks', 'prompt_tokens', 'completion_tokens', 'total_tokens', 'cached_tokens',
    'prompt_audio_tokens', 'reasoning_tokens', 'completion_audio_tokens',
    'accepted_prediction_tokens', 'rejected_prediction_tokens', 'cache_creation_input_tokens',
    'raw_response_bytes',
)


def _alter(to: str) -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    clauses = ', '.join(f'ALTER COLUMN {name} TYPE {to} USING {name}::{to}' for name in COUNTS)
    op.execute(f'ALTER TABLE probes {clauses}')


def upgrade() -> None:
    _alter('numeric')


def downgrade() -> None:
    _alter('bigint')
