"""The wall clock as a value: whatever stamps or compares times on a path takes a `Clock` (or
the moment it read from one), so a test can hand that whole path one fixed clock instead.
A path that reads the wall clock itself must never meet times from a fixed one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real clock, in UTC (the default Clock everywhere)."""
    return datetime.now(UTC)
