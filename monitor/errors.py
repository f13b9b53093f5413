"""The errors monitor raises. Upstream failures are not here: a probe returns them as data.

    MonitorError
     ├── ConfigError            a config file or variable is wrong (names file, key, expected, got)
     ├── StoreError
     │    ├── SchemaNotAtHead   the database needs `monitor db upgrade`
     │    └── StoreUnavailable  the database cannot be reached or refused a write
     │         ├── StoreCorrupt     a SQLite file that is not (or no longer) a database
     │         └── StoreReadOnly    a SQLite file that cannot be written
     ├── SpoolInUse             another process holds the spool file
     ├── SimulatorError         a simulator scenario is invalid
     └── ProxyError             `monitor proxy` cannot or may not listen where it was asked

The CLI turns any MonitorError into a one-line message and exit code 2 (config) or 1 (others);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MonitorError(Exception):
    """Base of every error monitor raises on purpose."""


class ConfigError(MonitorError):
    def __init__(self, path: str, key: str, expected: str, got: object, *, show_got: bool = True):
        self.path = path
        self.key = key
        self.expected = expected
        self.got = got
        where = f"{path}: {key}" if key else path
        message = f"{where}: expected {expected}"
        if show_got:
            message += f", got {got!r}" if not isinstance(got, _Raw) else f", got {got}"
        super().__init__(message)


class _Raw(str):
    """A `got` value to print as-is rather than repr'd (e.g. 'nothing', 'a table')."""


def raw(text: str) -> _Raw:
    return _Raw(text)


class StoreError(MonitorError):
    pass


class SchemaNotAtHead(StoreError):
    def __init__(self, url: str, current: str | None, head: str):
        self.current = current
        self.head = head
        state = "has no monitor schema" if current is None else f"is at revision {current}"
        super().__init__(
            f"database {url} {state}, but this monitor needs {head}: run `monitor db upgrade`"
        )


class StoreUnavailable(StoreError):
    pass


class StoreCorrupt(StoreUnavailable):
    def __init__(self, path: str, detail: str):
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}")


class StoreReadOnly(StoreUnavailable):
    def __init__(self, path: str):
        self.path = path
        super().__init__(f"{path} is read-only")


class SpoolInUse(MonitorError):
    def __init__(self, path: str):
        self.path = path
        super().__init__(
            f"another monitor process is spooling to {path}: give each instance its own "
            "--spool (two processes sharing one would delete each other's unwritten results)"
        )


class SimulatorError(MonitorError):
    pass


class ProxyError(MonitorError):
    pass
