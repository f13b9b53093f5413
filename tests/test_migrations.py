"""Migrations are the schema's truth: they build an empty database on both engines, agree with
the models, and every command refuses a database that is behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from monitor.errors import SchemaNotAtHead
from monitor.store import db
from monitor.store.models import Base
from tests.conftest import POSTGRES_URL, _postgres_admin


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"monitor_empty_{uuid.uuid4().hex[:10]}"
    with _postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    with _postgres_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrade_builds_an_empty_database_that_matches_the_models(empty_url: str) -> None:
    db.upgrade(empty_url)
    engine = db.open_store(empty_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            tables = set(inspect(connection).get_table_names())
        assert {t.name for t in Base.metadata.sorted_tables} <= tables
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(empty_url: str) -> None:
    db.upgrade(empty_url)
    command.downgrade(db.alembic_config(empty_url), "base")
    engine = db.create(empty_url)
    assert db.current_revision(engine) is None
    db.upgrade(empty_url)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


def test_a_database_behind_head_is_refused_with_the_command_to_run(empty_url: str) -> None:
    with pytest.raises(SchemaNotAtHead) as caught:
        db.open_store(empty_url)
    assert "has no monitor schema" in str(caught.value)
    assert "run `monitor db upgrade`" in str(caught.value)


def test_every_index_and_constraint_is_named() -> None:
    for table in Base.metadata.sorted_tables:
        for constraint in table.constraints:
            assert constraint.name, f"{table.name} has an unnamed {type(constraint).__name__}"
        for index in table.indexes:
            assert index.name
