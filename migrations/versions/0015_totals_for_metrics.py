"""totals for /metrics: each target's newest probe, newest answer, rate limits and checks

rollup_totals gains what /metrics read from the probes at every scrape, target by target: the
newest probe (when, and whether it succeeded), the fingerprint and model of the newest
successful one, the newest rate-limit values, and the check outcomes counted per check.
Rollups fold them from now on; here they are filled from the history already folded, target
by target (one backward walk of ix_probes_target_id_started_at each, and one count of its
check outcomes). Check outcomes are counted only for probes the totals already hold (up to
the fold watermark, outside its gaps), so that none is counted twice when the rest is folded.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 19:00:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from monitor.store.schema import Json, UtcDateTime, UtcMicros

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = [
    ('newest_at', UtcDateTime()),
    ('newest_ok', sa.Boolean()),
    ('ok_at', UtcDateTime()),
    ('ok_fingerprint', sa.Text()),
    ('ok_model', sa.Text()),
    ('limits_at', UtcDateTime()),
    ('limit_requests', sa.BigInteger()),
    ('limit_tokens', sa.BigInteger()),
    ('remaining_requests', sa.BigInteger()),
    ('remaining_tokens', sa.BigInteger()),
]

TOTALS = sa.table('rollup_totals', sa.column('target_id', sa.BigInteger()),
                  *(sa.column(name, kind) for name, kind in COLUMNS),
                  sa.column('checks', Json()))
PROBES = sa.table('probes', sa.column('id', sa.BigInteger()), sa.column('target_id'),
                  sa.column('started_at', UtcMicros()), sa.column('ok', sa.Boolean()),
                  sa.column('replay_of'), sa.column('facet_id'),
                  sa.column('ratelimit_remaining_requests'),
                  sa.column('ratelimit_remaining_tokens'))
FACETS = sa.table('probe_facets', sa.column('id'), sa.column('system_fingerprint'),
                  sa.column('model'), sa.column('ratelimit_limit_requests'),
                  sa.column('ratelimit_limit_tokens'))
STATE = sa.table('rollup_state', sa.column('id'), sa.column('last_probe_id'),
                 sa.column('gaps', Json()))
CHECKS = sa.table('check_results', sa.column('probe_id'), sa.column('target_id'),
                  sa.column('check_name'), sa.column('outcome'))


def upgrade() -> None:
    with op.batch_alter_table('rollup_totals', schema=None) as batch_op:
        for name, kind in COLUMNS:
            batch_op.add_column(sa.Column(name, kind, nullable=True))
        batch_op.add_column(sa.Column('checks', Json(), server_default=sa.text("'{}'"),
                                      nullable=False))
    _fill(op.get_bind())


def _newest(connection: sa.Connection, target_id: int, *columns: Any,
            where: Any = None) -> Any:
    """The target's newest canary probe that matches `where`, with its facet."""
    return connection.execute(
        sa.select(PROBES.c.started_at, *columns)
        .select_from(PROBES.join(FACETS, FACETS.c.id == PROBES.c.facet_id))
        .where(PROBES.c.target_id == target_id, PROBES.c.replay_of.is_(None),
               sa.true() if where is None else where)
        .order_by(PROBES.c.started_at.desc()).limit(1)).first()


def _fill(connection: sa.Connection) -> None:
    state = connection.execute(sa.select(STATE.c.last_probe_id, STATE.c.gaps)
                               .where(STATE.c.id == 1)).first()
    if state is None:
        return  # nothing folded yet: rollups fill the totals as they fold
    folded = sa.and_(CHECKS.c.probe_id <= state.last_probe_id,
                     *(sa.not_(CHECKS.c.probe_id.between(lo, hi)) for lo, hi, _ in state.gaps))
    limits = (FACETS.c.ratelimit_limit_requests, FACETS.c.ratelimit_limit_tokens,
              PROBES.c.ratelimit_remaining_requests, PROBES.c.ratelimit_remaining_tokens)
    for target_id in connection.execute(sa.select(TOTALS.c.target_id)).scalars().all():
        values: dict[str, Any] = {}
        if newest := _newest(connection, target_id, PROBES.c.ok):
            values.update(newest_at=newest.started_at, newest_ok=newest.ok)
        if served := _newest(connection, target_id, FACETS.c.system_fingerprint,
                             FACETS.c.model, where=PROBES.c.ok.is_(True)):
            values.update(ok_at=served.started_at, ok_fingerprint=served.system_fingerprint,
                          ok_model=served.model)
        if carried := _newest(connection, target_id, *limits,
                              where=sa.or_(*(column.is_not(None) for column in limits))):
            values.update(limits_at=carried.started_at,
                          limit_requests=carried.ratelimit_limit_requests,
                          limit_tokens=carried.ratelimit_limit_tokens,
                          remaining_requests=carried.ratelimit_remaining_requests,
                          remaining_tokens=carried.ratelimit_remaining_tokens)
        checks: dict[str, dict[str, int]] = {}
        for check, outcome, count in connection.execute(
                sa.select(CHECKS.c.check_name, CHECKS.c.outcome, sa.func.count())
                .select_from(CHECKS.join(PROBES, PROBES.c.id == CHECKS.c.probe_id))
                .where(CHECKS.c.target_id == target_id, PROBES.c.replay_of.is_(None), folded)
                .group_by(CHECKS.c.check_name, CHECKS.c.outcome)):
            checks.setdefault(check, {})[outcome] = count
        values['checks'] = checks
        connection.execute(TOTALS.update().where(TOTALS.c.target_id == target_id)
                           .values(**values))


def downgrade() -> None:
    with op.batch_alter_table('rollup_totals', schema=None) as batch_op:
        batch_op.drop_column('checks')
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
