"""probes, targets, request payloads

Revision ID: 0001
Revises:
Create Date: 2026-11-26 01:46:37.343830
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import monitor.store.models

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('request_payloads',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_request_payloads')),
    sa.UniqueConstraint('sha256', name=op.f('uq_request_payloads_sha256'))
    )
    op.create_table('targets',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', monitor.store.models.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_targets')),
    sa.UniqueConstraint('name', name=op.f('uq_targets_name'))
    )
    op.create_table('target_configs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('target_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('config_hash', sa.String(length=64), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('first_seen_at', monitor.store.models.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['target_id'], ['targets.id'], name=op.f('fk_target_configs_target_id_targets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_target_configs')),
    sa.UniqueConstraint('target_id', 'config_hash', name=op.f('uq_target_configs_target_id'))
    )
    op.create_table('probes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('uid', sa.String(length=32), nullable=False),
    sa.Column('target_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('target_config_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('request_payload_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('started_at', monitor.store.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('stream', sa.Boolean(), nullable=False),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('error_kind', sa.String(length=40), nullable=True),
    sa.Column('error_detail', sa.Text(), nullable=True),
    sa.Column('http_status', sa.SmallInteger(), nullable=True),
    sa.Column('time_to_headers_ms', sa.Float(), nullable=True),
    sa.Column('total_ms', sa.Float(), nullable=True),
    sa.Column('time_to_first_token_ms', sa.Float(), nullable=True),
    sa.Column('output_tokens_per_s', sa.Float(), nullable=True),
    sa.Column('openai_processing_ms', sa.Float(), nullable=True),
    sa.Column('openai_version', sa.String(length=40), nullable=True),
    sa.Column('openai_organization', sa.String(length=200), nullable=True),
    sa.Column('x_request_id', sa.String(length=200), nullable=True),
    sa.Column('retry_after_s', sa.Float(), nullable=True),
    sa.Column('ratelimit_limit_requests', sa.BigInteger(), nullable=True),
    sa.Column('ratelimit_limit_tokens', sa.BigInteger(), nullable=True),
    sa.Column('ratelimit_remaining_requests', sa.BigInteger(), nullable=True),
    sa.Column('ratelimit_remaining_tokens', sa.BigInteger(), nullable=True),
    sa.Column('ratelimit_reset_requests_s', sa.Float(), nullable=True),
    sa.Column('ratelimit_reset_tokens_s', sa.Float(), nullable=True),
    sa.Column('response_id', sa.String(length=200), nullable=True),
    sa.Column('response_created_at', monitor.store.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('system_fingerprint', sa.String(length=200), nullable=True),
    sa.Column('service_tier', sa.String(length=40), nullable=True),
    sa.Column('finish_reason', sa.String(length=40), nullable=True),
    sa.Column('choices', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('stream_chunks', sa.Integer(), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=True),
    sa.Column('completion_tokens', sa.Integer(), nullable=True),
    sa.Column('total_tokens', sa.Integer(), nullable=True),
    sa.Column('cached_tokens', sa.Integer(), nullable=True),
    sa.Column('prompt_audio_tokens', sa.Integer(), nullable=True),
    sa.Column('reasoning_tokens', sa.Integer(), nullable=True),
    sa.Column('completion_audio_tokens', sa.Integer(), nullable=True),
    sa.Column('accepted_prediction_tokens', sa.Integer(), nullable=True),
    sa.Column('rejected_prediction_tokens', sa.Integer(), nullable=True),
    sa.Column('response_headers_zlib', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=False),
    sa.Column('raw_response_zlib', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=False),
    sa.Column('raw_response_bytes', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['request_payload_id'], ['request_payloads.id'], name=op.f('fk_probes_request_payload_id_request_payloads')),
    sa.ForeignKeyConstraint(['target_config_id'], ['target_configs.id'], name=op.f('fk_probes_target_config_id_target_configs')),
    sa.ForeignKeyConstraint(['target_id'], ['targets.id'], name=op.f('fk_probes_target_id_targets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_probes')),
    sa.UniqueConstraint('uid', name=op.f('uq_probes_uid'))
    )
    with op.batch_alter_table('probes', schema=None) as batch_op:
        batch_op.create_index('ix_probes_target_id_started_at', ['target_id', 'started_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('probes', schema=None) as batch_op:
        batch_op.drop_index('ix_probes_target_id_started_at')

    op.drop_table('probes')
    op.drop_table('target_configs')
    op.drop_table('targets')
    op.drop_table('request_payloads')
