"""measured values as real and small ids as integer in probes, on PostgreSQL

A probe's durations, rates and reset times were double precision, 8 bytes each and 8-aligned;
float32's ~7 significant digits (4 us at 60,000 ms) are finer than any network timing, so they
become real (schema.Float32), 4 bytes. The ids of its target, configuration and facet become
integer: those tables hold one row per target, per configuration change, per distinct set of
facet values, never near 2**31. About 32 bytes less a probe's row (docs/benchmarks.md,
"Smaller history"). One ALTER rewrites the table and its indexes once. SQLite is unchanged:
its REAL and INTEGER columns already hold these (the code binds new values there as it does
on PostgreSQL, as float32's shortest decimal, so both databases read alike).

A stored value beyond float32's range (an absurd header parsed before this) becomes NULL, as
the code now stores such a value. Downgrading widens the columns again; the values stay as
rounded, as the shortest decimals the code read.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 13:30:00.000000
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from alembic import op

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MEASURED = (
    'time_to_headers_ms', 'total_ms', 'time_to_first_token_ms', 'output_tokens_per_s',
    'openai_processing_ms', 'retry_after_s', 'ratelimit_reset_requests_s',
    'ratelimit_reset_tokens_s', 'ratelimit_reset_input_tokens_s',
    'ratelimit_reset_output_tokens_s', 'proxy_added_ms',
)
IDS = ('target_id', 'target_config_id', 'facet_id')
# The largest finite float32: a finite double beyond it cannot become real (an error).
FLOAT32_MAX = '3.4028234663852886e38'


def _in_range(name: str) -> str:
    return (f"CASE WHEN abs({name}) > {FLOAT32_MAX} AND abs({name}) <> 'Infinity' "
            f"AND {name} <> 'NaN' THEN NULL ELSE {name}::real END")


def _alter(measured_to: str, ids_to: str, using: Callable[[str], str]) -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    clauses = [f'ALTER COLUMN {name} TYPE {measured_to} USING {using(name)}'
               for name in MEASURED]
    clauses += [f'ALTER COLUMN {name} TYPE {ids_to}' for name in IDS]
    op.execute(f'ALTER TABLE probes {", ".join(clauses)}')


def upgrade() -> None:
    _alter('real', 'integer', _in_range)


def downgrade() -> None:
    # Through text: a real's shortest decimal (230.14902), as the code reads it, rather than
    # its float32's exact value (230.14901733398438).
    _alter('double precision', 'bigint', lambda name: f'{name}::text::double precision')
