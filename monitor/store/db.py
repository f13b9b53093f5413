"""Engines for SQLite and PostgreSQL, the Alembic configuration, and the schema-version gate.

Every command that reads or writes history calls `open_store(url)`, which refuses a database
that is not at the head revision and names the command that fixes it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

import monitor.migrations
from monitor.errors import SchemaNotAtHead, StoreError, StoreUnavailable

# Long enough to ride out another writer's checkpoint, short enough to surface a stuck lock.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """Default PostgreSQL URLs to psycopg 3 (SQLAlchemy's bare default is psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def display_url(url: str) -> str:
    """The URL with any password hidden, for messages and `monitor status`."""
    return make_url(normalize_url(url)).render_as_string(hide_password=True)


def create(url: str) -> Engine:
    """An engine with the per-connection settings each backend needs."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    assert isinstance(dbapi_connection, sqlite3.Connection)
    cursor = dbapi_connection.cursor()
    # WAL lets readers (report, status) run while the daemon writes; NORMAL is durable across
    # application crashes and only risks the last commits on power loss, at a fraction of
    # FULL's fsync cost.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(monitor.migrations.__file__).parent))
    # ConfigParser treats % as interpolation; a password may contain one.
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "migrations/versions holds no revision"
    return head


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except OperationalError as exc:
        raise StoreUnavailable(f"cannot reach database {engine.url!r}: {exc.orig}") from None


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database to `revision`, creating the SQLite file's directory if needed."""
    _ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)


def open_store(url: str) -> Engine:
    """An engine for a database at head; SchemaNotAtHead (or StoreUnavailable) otherwise."""
    _ensure_sqlite_dir(url)
    engine = create(url)
    try:
        check_schema(engine)
    except StoreError:
        engine.dispose()
        raise
    return engine


def check_schema(engine: Engine) -> None:
    """SchemaNotAtHead unless the database is at this monitor's head revision."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        raise SchemaNotAtHead(display_url(str(engine.url)), current, head)


def _ensure_sqlite_dir(url: str) -> None:
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)


def size_bytes(engine: Engine) -> int | None:
    """Bytes the database takes on disk (SQLite: file and WAL; PostgreSQL: the database)."""
    if engine.dialect.name == "sqlite":
        path = engine.url.database
        if not path:
            return None
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    with engine.connect() as connection:
        size = connection.exec_driver_sql("SELECT pg_database_size(current_database())").scalar()
    return int(size) if size is not None else None


class InstanceLock:
    """One `monitor run` per SQLite file: SQLite cannot coordinate several writers' schedules.
    The lock is an flock on a file beside the database, released by the OS if the process dies."""

    def __init__(self, url: str) -> None:
        self.path = make_url(normalize_url(url)).database or ""
        self._file: Any = None

    def acquire(self) -> None:
        # Held open for the life of the process: closing it is what releases the lock.
        self._file = open(self.path + ".lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise StoreUnavailable(
                f"another `monitor run` is already using {self.path}; SQLite supports one "
                "instance (use PostgreSQL to run several)"
            ) from None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
