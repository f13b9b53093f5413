"""The INSERT of probe rows, compiled once per database and run through the driver.

SQLAlchemy's Core insert rebuilds each row's parameters in Python (a dict per row, each value
through its type's bind processor, then insertmanyvalues splitting a batch into multi-row
VALUES): on a batch of canaries that was as much CPU as building the rows themselves, and on
PostgreSQL psycopg then adapted ~25,000 parameters of one statement one by one. Here the
statement is compiled by SQLAlchemy once (so the SQL, its casts and the bind processors are
exactly the ones SQLAlchemy would use), the rows become tuples in column order with only the
columns that have a processor processed, and the driver's executemany runs them (psycopg in
pipeline mode, one statement prepared once; sqlite3 stepping one prepared statement in C).
The ids come back with one indexed SELECT by uid (sqlite3's executemany cannot return rows),
or RETURNING for a lone row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Dialect, insert
from sqlalchemy.exc import StatementError

from monitor.store.schema import probes

# Every column but the id the database assigns, in table order.
_COLUMNS = tuple(column for column in probes.columns if column.key != "id")
# psycopg's named placeholders (`%(uid)s::VARCHAR`), made positional for tuples of values.
_NAMED = re.compile(r"%\((\w+)\)s")
# The ids of rows just inserted, by their uids (unique, indexed): written out rather than built
# by SQLAlchemy each time, whose expanding IN cost more than the query (~110 us against 17).
# The uids are bound as stored (the column's bind processor has run: 16 bytes on SQLite, hex
# text cast to uuid on PostgreSQL) and come back in the same form, to match the bound ones.
_IDS_SQLITE = "SELECT uid, id FROM probes WHERE uid IN ({})"
_IDS_POSTGRESQL = ("SELECT replace(uid::text, '-', ''), id FROM probes "
                   "WHERE uid = ANY(%s::uuid[])")


class ProbeInsert:
    """Inserts probe rows (dicts as `records._probe_values` builds them) on one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.keys = tuple(column.key for column in _COLUMNS)
        sql = str(insert(probes).inline().compile(dialect=dialect, column_keys=list(self.keys)))
        if dialect.paramstyle == "pyformat":
            names = _NAMED.findall(sql)
            if tuple(names) != self.keys:
                raise RuntimeError(f"unexpected probes INSERT: {sql}")
            sql = _NAMED.sub("%s", sql)
        elif dialect.paramstyle != "qmark":
            raise RuntimeError(f"no probes INSERT for paramstyle {dialect.paramstyle}")
        self.sql = sql
        self._paramstyle = dialect.paramstyle
        processors = [(index, column.type.dialect_impl(dialect).bind_processor(dialect))
                      for index, column in enumerate(_COLUMNS)]
        self._processors: tuple[tuple[int, Callable[[Any], Any]], ...] = tuple(
            (index, process) for index, process in processors if process is not None)
        self._uid = self.keys.index("uid")

    def execute(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert `rows` and return their ids in order. A uid already stored raises
        IntegrityError (as any other constraint), and the caller's transaction rolls back."""
        params = [self._params(row) for row in rows]
        if len(params) == 1:
            return [int(connection.exec_driver_sql(f"{self.sql} RETURNING id",
                                                   params[0]).scalar_one())]
        connection.exec_driver_sql(self.sql, params)
        uids = [row[self._uid] for row in params]
        if self._paramstyle == "qmark":
            query = _IDS_SQLITE.format(", ".join("?" * len(uids)))
            found = connection.exec_driver_sql(query, tuple(uids))
        else:
            found = connection.exec_driver_sql(_IDS_POSTGRESQL, (uids,))
        ids: dict[Any, int] = {uid: probe_id for uid, probe_id in found}
        return [ids[uid] for uid in uids]

    def _params(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        values = list(map(row.get, self.keys))
        try:
            for index, process in self._processors:
                values[index] = process(values[index])
        except Exception as exc:
            # As SQLAlchemy reports a value it could not bind (a naive datetime, say): a
            # StatementError, which store/failures.py classifies as a poison record.
            raise StatementError(f"({type(exc).__name__}) {exc}", self.sql, None, exc) from exc
        return tuple(values)
