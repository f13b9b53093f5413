"""Why a write failed: the database cannot take anything now, or it will never take this record.

The two need opposite handling. An unavailable database is waited out: results go to the spool
and are written when it is back. A poison record (a value the schema refuses, a constraint it
breaks, a string the driver cannot encode) fails the same way on every retry, so it is moved
aside (`<spool>.quarantine`) with a log line naming it, and everything after it is stored.
Retrying a poison record would stop storage for every target for good; quarantining a record
because the database was down would lose it. `classify` is the one place that decides.
"""

from __future__ import annotations

import enum

from sqlalchemy import exc as sa_exc

# PostgreSQL errors that come with a record but are about the database: the schema or the
# grants are not what this monitor needs (undefined table or column, insufficient privilege,
# invalid schema). Every record would fail the same way, so they count as unavailable.
_NOT_ABOUT_THE_RECORD = {"42P01", "42703", "42501", "3F000"}


class Failure(enum.Enum):
    UNAVAILABLE = "database unavailable"  # spool, retry later
    POISON = "poison record"  # quarantine this record, carry on with the next


def classify(error: BaseException) -> Failure | None:
    """How to treat `error` raised while writing records; None if it is not a storage
    failure at all (a bug: let it propagate). Most specific first."""
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return Failure.UNAVAILABLE
        if isinstance(error, sa_exc.DataError | sa_exc.IntegrityError):
            return Failure.POISON
        if isinstance(error, sa_exc.ProgrammingError):
            code = getattr(error.orig, "sqlstate", None)
            return Failure.UNAVAILABLE if code in _NOT_ABOUT_THE_RECORD else Failure.POISON
        # OperationalError, InterfaceError and any other DatabaseError (SQLite's "file is not
        # a database", "database disk image is malformed"): the database, not the record.
        return Failure.UNAVAILABLE
    if isinstance(error, sa_exc.StatementError):
        # A value that could not be bound, before it reached the database (an encode error,
        # a naive datetime refused by UtcDateTime).
        return Failure.POISON
    if isinstance(error, sa_exc.SQLAlchemyError):
        return Failure.UNAVAILABLE  # e.g. the pool timed out waiting for a connection
    if isinstance(error, UnicodeError | OverflowError):
        # Raised by a driver while binding, unwrapped (sqlite3: an int beyond 64 bits, a lone
        # surrogate in a string).
        return Failure.POISON
    return None


def describe(error: BaseException) -> str:
    """The error's class and the driver's own first line, without the statement and its
    parameters (a probe's whole body) that SQLAlchemy's message carries."""
    cause = error
    if isinstance(error, sa_exc.StatementError) and error.orig is not None:
        cause = error.orig
    lines = str(cause).strip().splitlines() or [""]
    text = lines[0][:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
