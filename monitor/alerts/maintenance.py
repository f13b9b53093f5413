"""Maintenance windows: stretches of time during which alerts do not notify.

A window is one-off (two aware instants) or recurring (a local start time on some weekdays, in an
IANA time zone, lasting a duration or until a local end time). Recurring windows are laid out in
their own zone and compared in UTC, which is how they follow daylight saving time:
- `duration` is real elapsed time; `end = "HH:MM"` is a wall-clock time, so on the night the
  clocks change such a window is an hour shorter or longer.
- A start time the clock skips (02:30 when spring skips from 02:00 to 03:00) begins as the clock
  jumps, shifted by the gap (03:30); one that happens twice in autumn means the first.

`active_window` is pure: the engine passes the clock, so replaying history gives the same answer.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from monitor.alerting import MaintenanceWindow, OneOff, Recurring
from monitor.config.checks import _NOTHING, summarize, unknown_key
from monitor.durations import parse_ms
from monitor.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()
# Longer would overlap next week's window; seven days on one weekday is already "always".
MAX_RECURRING = timedelta(days=7)
_LONGEST_MS = 3650 * 86_400_000  # as config's longest duration


def active_window(
    windows: Iterable[MaintenanceWindow], target: str, at: datetime
) -> MaintenanceWindow | None:
    """The first window that silences `target` at the aware instant `at`, or None."""
    if at.utcoffset() is None:
        raise ValueError(f"`at` must be an aware datetime, got {at.isoformat()}")
    return next((w for w in windows if w.applies_to(target) and w.when.covers(at)), None)


# Windows followed through back to back (one ending as the next begins) at most this often: a
# recurring window that never ends would otherwise be followed for ever.
_CHAINED = 10


def maintenance_until(
    windows: Iterable[MaintenanceWindow], target: str, at: datetime
) -> datetime | None:
    """When the maintenance silencing `target` at `at` ends (windows that overlap or follow
    each other without a gap count as one), or None if none silences it."""
    windows = [w for w in windows if w.applies_to(target)]
    until = None
    for _ in range(_CHAINED):
        ends = [end for w in windows if (end := w.when.ends(until or at)) is not None]
        if not ends:
            break
        until = max(ends)
    return until


# --- reading [[alerts.maintenance]] ------------------------------------------------------------

_KEYS = ("name", "reason", "targets", "start", "end", "duration", "days", "timezone")
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_INSTANT = "a date and time with a UTC offset, like 2026-12-01T02:00:00Z"
_START = f'{_INSTANT}, or a local time like "02:00"'
_ZONE = 'an IANA time zone like "Europe/Berlin"'


def parse_windows(
    items: object, path: str, *, known_targets: Collection[str] | None = None
) -> tuple[MaintenanceWindow, ...]:
    """Read the `[[alerts.maintenance]]` array of `path`; `known_targets` catches misspelt names."""
    if not isinstance(items, list):
        raise ConfigError(path, "alerts.maintenance", "an array of tables [[alerts.maintenance]]",
                          summarize(items, dates=True))
    return tuple(
        _Entry(path, f"alerts.maintenance[{index}]", item).window(known_targets)
        for index, item in enumerate(items)
    )


class _Entry:
    """One table of the array, with the key path its errors are reported under."""

    def __init__(self, path: str, key: str, table: object) -> None:
        if not isinstance(table, dict):
            raise ConfigError(path, key, "a table", summarize(table, dates=True))
        self.path = path
        self.key = key
        self.table: dict[str, Any] = table

    def error(self, name: str, expected: str, got: object = _NOTHING) -> ConfigError:
        return ConfigError(self.path, f"{self.key}.{name}", expected, summarize(got, dates=True))

    def window(self, known_targets: Collection[str] | None) -> MaintenanceWindow:
        for name in self.table:
            if name not in _KEYS:
                raise self.error(name, *unknown_key(name, _KEYS))
        name = self.text("name") or self.key
        reason = self.text("reason") or ""
        targets = self.targets(known_targets)
        start = self.table.get("start")
        if start is None:
            raise self.error("start", _START)
        local_start = _local_time(start)
        when = self.one_off(start) if local_start is None else self.recurring(local_start)
        return MaintenanceWindow(name, when, targets, reason)

    def text(self, name: str) -> str | None:
        value = self.table.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise self.error(name, "a non-empty string", value)
        return value

    def targets(self, known: Collection[str] | None) -> tuple[str, ...]:
        value = self.table.get("targets")
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            raise self.error("targets", "a non-empty array of target names (omit for all)", value)
        for index, item in enumerate(value):
            if not isinstance(item, str) or (known is not None and item not in known):
                expected = "a target name" if known is None else (
                    f"the name of a target ({', '.join(sorted(known))})")
                raise self.error(f"targets[{index}]", expected, item)
        return tuple(value)

    def one_off(self, value: object) -> OneOff:
        start = _instant(value)
        if start is None:
            raise self.error("start", _START, value)
        for name in ("days", "timezone"):
            if name in self.table:
                expected = f'no {name} in a one-off window (start = "HH:MM" makes it recurring)'
                raise self.error(name, expected, self.table[name])
        if self.length() == "end":
            end = _instant(self.table["end"])
            if end is None:
                raise self.error("end", _INSTANT, self.table["end"])
            if end <= start:
                raise self.error("end", f"a time after start ({start.isoformat()})", end)
        else:
            end = start + self.duration(None)
        return OneOff(start, end)

    def recurring(self, start: time) -> Recurring:
        zone = _zone(self.table.get("timezone"))
        if zone is None:
            raise self.error("timezone", _ZONE, self.table.get("timezone", _NOTHING))
        days = self.days()
        until: timedelta | time
        if self.length() == "end":
            end = _local_time(self.table["end"])
            if end is None or end == start:
                expected = f'a local time like "04:00", other than start ({start:%H:%M})'
                raise self.error("end", expected, self.table["end"])
            until = end
        else:
            until = self.duration(MAX_RECURRING)
        return Recurring(days, start, until, zone)

    def length(self) -> str:
        """Which of end and duration says how long the window lasts."""
        has_end, has_duration = "end" in self.table, "duration" in self.table
        if has_end and has_duration:
            raise self.error("duration", "either end or duration, not both",
                             self.table["duration"])
        if not has_end and not has_duration:
            raise self.error("end", 'an end, or a duration like "2h"')
        return "end" if has_end else "duration"

    def duration(self, longest: timedelta | None) -> timedelta:
        value = self.table["duration"]
        ms = parse_ms(value) if isinstance(value, str) else None
        # Beyond timedelta's ten thousand years (and the calendar) is no window either.
        length = (timedelta(milliseconds=ms) if ms is not None and 0 < ms <= _LONGEST_MS
                  else None)
        if length is None or (longest is not None and length > longest):
            limit = f' and at most "{longest.days if longest is not None else 3650}d"'
            raise self.error("duration", f'a duration like "2h", longer than 0s{limit}', value)
        return length

    def days(self) -> tuple[int, ...]:
        value = self.table.get("days")
        if value is None:
            return tuple(range(7))
        if not isinstance(value, list) or not value:
            raise self.error("days", 'a non-empty array of days like ["sat", "sun"] (omit for '
                             "every day)", value)
        found = set()
        for index, item in enumerate(value):
            if not isinstance(item, str) or item.lower() not in DAYS:
                raise self.error(f"days[{index}]", "a day: " + ", ".join(DAYS), item)
            found.add(DAYS.index(item.lower()))
        return tuple(sorted(found))


def _local_time(value: object) -> time | None:
    """A TOML local time (02:00:00) or an "HH:MM" string."""
    if isinstance(value, time):
        return value
    match = _HHMM.fullmatch(value) if isinstance(value, str) else None
    return time(int(match[1]), int(match[2])) if match else None


def _instant(value: object) -> datetime | None:
    """A TOML offset date-time or an ISO 8601 string with an offset, in UTC; naive ones refused."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime) or value.utcoffset() is None:
        return None
    return value.astimezone(UTC)


def _zone(value: object) -> ZoneInfo | None:
    if not isinstance(value, str):
        return None
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory like "Europe"
        return None
