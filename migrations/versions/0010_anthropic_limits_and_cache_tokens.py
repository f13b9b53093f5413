"""Anthropic: input and output token rate limits, and tokens written to the prompt cache

Anthropic's Messages API limits input and output tokens apart from requests and tokens
(`anthropic-ratelimit-input-tokens-*`, `anthropic-ratelimit-output-tokens-*`) and reports the
prompt tokens it wrote to its cache (`usage.cache_creation_input_tokens`). Every other field of
its answers lands in an existing column (probe/anthropic.py says which). Nullable, with no
backfill: probes stored before this revision sent none of them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-12 10:00:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = [
    ('ratelimit_limit_input_tokens', sa.BigInteger()),
    ('ratelimit_remaining_input_tokens', sa.BigInteger()),
    ('ratelimit_reset_input_tokens_s', sa.Float()),
    ('ratelimit_limit_output_tokens', sa.BigInteger()),
    ('ratelimit_remaining_output_tokens', sa.BigInteger()),
    ('ratelimit_reset_output_tokens_s', sa.Float()),
    ('cache_creation_input_tokens', sa.BigInteger()),
]


def upgrade() -> None:
    with op.batch_alter_table('probes', schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('probes', schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
