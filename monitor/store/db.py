"""Engines for SQLite and PostgreSQL, the Alembic configuration, and the schema-version gate.

Every command that reads or writes history calls `open_store(url)`, which refuses a database
that is not at the head revision and names the command that fixes it. The gate reads the
revision files' text and the alembic_version table itself: importing Alembic costs more than
a command like `monitor status` does all told, so only `upgrade` loads it.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Dialect, Engine, Table, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

import monitor.migrations
from monitor.errors import (
    SchemaNotAtHead,
    StoreCorrupt,
    StoreError,
    StoreReadOnly,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.dialects import postgresql, sqlite

# Long enough to ride out another writer's checkpoint, short enough to surface a stuck lock.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Address space SQLite may map for reads; pages count as memory only once read.
SQLITE_MMAP_BYTES = 256 * 1024 * 1024
# Connections an engine keeps open, and the most it opens: more callers wait for one. The
# daemon's probe threads each hold one for a few short transactions per probe. With
# SQLAlchemy's default of 5 kept (and 10 more opened and closed for a burst), a fleet's bursts
# opened a new connection for every third or fourth probe; with 16 kept and 16 more, a daemon
# that fell behind at 10,000 targets still opened 7,292 in 3 minutes (bench/daemon_load.py):
# on PostgreSQL a server backend each, on SQLite its pragmas and a cold page cache. Never
# more than 32 opened 34 in all, and used the CPU that the connects had taken for probes.
# The worker processes of `monitor run --workers` share them, each with its share of the
# targets (but never fewer than MIN_POOL_SIZE): two workers of 32 each took 64 of
# PostgreSQL's default max_connections (100), and four would have been refused.
POOL_SIZE = 32
MIN_POOL_SIZE = 8
# A SQLite file's engine keeps 16 and opens up to 16 more for a burst, closed on return: a
# connection opens in-process, without a server. Measured at 10,000 targets over 5 minutes
# (bench/daemon_load.py): kept for good (8 or 32, no overflow), the daemon's memory grew
# ~8 MB a minute after minute 2, in SQLite's and the driver's per-connection allocations (not
# the page cache: a smaller cache_size changed nothing); with the overflow opened and closed,
# +0.6 MB a minute, at ~5 % more CPU a probe.
SQLITE_POOL_SIZE = 16
# A pooled PostgreSQL connection unused for this long is pinged before it is used again.
PING_IDLE_S = 5.0
_IDLE_SINCE = "monitor_idle_since"  # its key in the pool entry's info


def normalize_url(url: str) -> str:
    """Default PostgreSQL URLs to psycopg 3 (SQLAlchemy's bare default is psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def display_url(url: str) -> str:
    """The URL with any password hidden, for messages and `monitor status`."""
    return make_url(normalize_url(url)).render_as_string(hide_password=True)


def upsert(dialect: Dialect, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into `table` that can take ON CONFLICT, in the dialect's form. The PostgreSQL
    module is imported only on PostgreSQL, whose engine has loaded it anyway: it imports every
    PostgreSQL driver's dialect and asyncio, which a command on SQLite should not pay for."""
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def create(url: str, workers: int = 1) -> Engine:
    """An engine with the per-connection settings each backend needs; `workers`: how many
    processes of one instance share the PostgreSQL connections (POOL_SIZE)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        # A file's engine pools (QueuePool); an in-memory one keeps a connection per thread.
        pooled = ({"pool_size": SQLITE_POOL_SIZE, "max_overflow": SQLITE_POOL_SIZE}
                  if sqlite_path(url) else {})
        engine = create_engine(url, **pooled)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # extra_float_digits: a real is printed as the shortest decimal that reads back as the
    # same value (the default since PostgreSQL 12; a server configured otherwise would round
    # schema.Float32's values to 6 digits).
    engine = create_engine(url, pool_size=max(POOL_SIZE // workers, MIN_POOL_SIZE),
                           max_overflow=0, connect_args={
                               "connect_timeout": 10, "options": "-c extra_float_digits=1"})
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection before use only if it sat idle for PING_IDLE_S: the server may
    have restarted or a firewall dropped it meanwhile. A dead one is replaced (the pool tries
    again). SQLAlchemy's pool_pre_ping pings at every checkout: in a busy daemon that is a round
    trip and a GIL hand-off before each of a probe's transactions, for connections used a
    moment ago; if the server goes away while they are busy, the first statement fails, the
    engine discards the whole pool, and the caller's retry (or the spool) keeps the probe."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def idle_from(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < PING_IDLE_S:
            return  # just opened, or in use a moment ago
        try:
            alive = dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error:
            alive = False
        if not alive:
            raise DisconnectionError("a pooled connection was closed while idle")


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
    # Reads through a memory map instead of a read() call per page: a report of two days of
    # probes touches thousands of pages (a third faster here). Only address space until read.
    cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    cursor.close()


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(monitor.migrations.__file__).parent))
    # ConfigParser treats % as interpolation; a password may contain one.
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


# `revision = "0007"` and `down_revision = "0006"` (or a tuple of them, for a merge), as
# Alembic's template writes them; tests/test_migrations.py checks the result against Alembic's.
_REVISION_LINE = re.compile(r"^(down_revision|revision)\b[^=]*=(.*)$", re.MULTILINE)
_QUOTED = re.compile(r"""['"]([^'"]+)['"]""")


def head_revision() -> str:
    """The revision no other revision builds on, read from migrations/versions."""
    revisions: set[str] = set()
    built_on: set[str] = set()
    versions = Path(monitor.migrations.__file__).parent / "versions"
    for path in versions.glob("*.py"):
        for name, value in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            (revisions if name == "revision" else built_on).update(_QUOTED.findall(value))
    heads = revisions - built_on
    assert len(heads) == 1, f"migrations/versions has heads {sorted(heads)}, not one"
    return heads.pop()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (Alembic's version table); None for an empty one."""
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return None
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    except DatabaseError as exc:
        found = diagnose(exc, str(engine.url))
        if found is not None:
            raise found from None
        if not isinstance(exc, OperationalError):
            raise
        raise StoreUnavailable(f"cannot reach database {engine.url!r}: {exc.orig}") from None
    if len(rows) > 1:
        raise StoreError(f"{display_url(str(engine.url))} has {len(rows)} schema revisions "
                         "(alembic_version), a branched history monitor cannot use")
    return str(rows[0][0]) if rows else None


# What SQLite says about a file it cannot use at all, and what monitor says instead.
_NOT_A_DATABASE = "not a SQLite database (file is corrupt or another format)"
_SQLITE_FILE_TROUBLE = {
    "file is not a database": _NOT_A_DATABASE,
    "database disk image is malformed": "the SQLite file is damaged (database disk image is "
                                        "malformed)",
}


def diagnose(error: BaseException, url: str) -> StoreError | None:
    """What is wrong with a SQLite file, from the error SQLite raised using it (corrupt, not a
    database, read-only); None for any other error or database."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or not isinstance(error, DBAPIError):
        return None
    if not isinstance(error.orig, sqlite3.DatabaseError):
        return None
    message = str(error.orig)
    path = sqlite_path(url) or ":memory:"
    if message in _SQLITE_FILE_TROUBLE:
        return StoreCorrupt(path, _SQLITE_FILE_TROUBLE[message])
    if "readonly database" in message:  # "attempt to write a readonly database"
        return StoreReadOnly(path)
    return None


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database to `revision`, creating the SQLite file's directory if needed."""
    from alembic import command

    _ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)


def open_store(url: str, workers: int = 1) -> Engine:
    """An engine for a database at head; SchemaNotAtHead (or StoreUnavailable) otherwise."""
    _ensure_sqlite_dir(url)
    engine = create(url, workers)
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


def sqlite_path(url: str) -> str | None:
    """The file a SQLite URL names (a `file:` URI too, `?uri=true`); None for memory or
    another database."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = parsed.database
    if parsed.query.get("uri") == "true" and path.startswith("file:"):
        path = path.removeprefix("file:").partition("?")[0]
        if path.startswith("//"):  # file://host/path: only an empty or local host
            path = "/" + path[2:].partition("/")[2]
        if path in ("", ":memory:") or parsed.query.get("mode") == "memory":
            return None
    return path


def _ensure_sqlite_dir(url: str) -> None:
    path = sqlite_path(url)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


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
        self.path = sqlite_path(url) or ""
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
