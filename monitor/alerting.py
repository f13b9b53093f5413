"""Alert settings and maintenance windows: plain data read from the [alerts] section.

Immutable and dependency-free but for the Secret wrapper (like domain.py, which imports
AlertSettings from here for Settings), so config, the alert layer and the daemon share them
without importing each other.
Maintenance windows are read by monitor/alerts/maintenance.py, which says how they follow time
zones and daylight saving time.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from monitor.secrets import Secret


@dataclass(frozen=True)
class OneOff:
    start: datetime  # aware
    end: datetime  # aware, after start

    def covers(self, at: datetime) -> bool:
        return self.start <= at < self.end

    def ends(self, at: datetime) -> datetime | None:
        """The end of the occurrence covering `at`, or None if none does."""
        return self.end if self.covers(at) else None


@dataclass(frozen=True)
class Recurring:
    days: tuple[int, ...]  # weekdays the window starts on, 0 = Monday
    start: time  # local, in `zone`
    until: timedelta | time  # elapsed time, or a local end time (the next day if before start)
    zone: ZoneInfo

    def covers(self, at: datetime) -> bool:
        return self.ends(at) is not None

    def ends(self, at: datetime) -> datetime | None:
        """The end of the occurrence covering `at` (the latest, if several overlap)."""
        moment = at.astimezone(UTC)
        today = at.astimezone(self.zone).date()
        # A window can start up to 7 days (plus a DST hour) before the local date of `at`.
        ends = []
        for back in range(9):
            day = today - timedelta(days=back)
            if day.weekday() in self.days:
                start, end = self._bounds(day)
                if start <= moment < end:
                    ends.append(end)
        return max(ends, default=None)

    def _bounds(self, day: date) -> tuple[datetime, datetime]:
        # Arithmetic on datetimes sharing a tzinfo is wall-clock arithmetic, and comparing them
        # ignores `fold`: both are done in UTC.
        start = datetime.combine(day, self.start, tzinfo=self.zone).astimezone(UTC)
        if isinstance(self.until, timedelta):
            return start, start + self.until
        end_day = day if self.until > self.start else day + timedelta(days=1)
        return start, datetime.combine(end_day, self.until, tzinfo=self.zone).astimezone(UTC)


@dataclass(frozen=True)
class MaintenanceWindow:
    name: str
    when: OneOff | Recurring
    targets: tuple[str, ...] = ()  # empty: every target
    reason: str = ""

    def applies_to(self, target: str) -> bool:
        return not self.targets or target in self.targets


SEVERITIES = ("info", "warning", "critical")  # domain.Severity's values, lowest first
CHANNEL_KINDS = ("webhook", "slack", "apprise")
_SCHEMA = re.compile(r"[a-z][a-z0-9+]{0,19}")


@dataclass(frozen=True)
class Channel:
    """One configured destination besides the log, and which notifications it takes.

    The URL is a secret (Slack's and most Apprise URLs carry a token or a password): it is
    held in a Secret and known everywhere else by `id`, which is stored and shown instead."""

    kind: str  # one of CHANNEL_KINDS, or "log" (always there, URL empty)
    url: Secret
    min_severity: str = "info"  # it takes alerts of this severity and above
    kinds: tuple[str, ...] = ()  # the drift kinds it takes; empty: every kind
    origin: str = ""  # where it was configured: 'alerts.apprise[0] (APPRISE_URLS)'

    @property
    def id(self) -> str:
        """'webhook:<hash>', 'slack:<hash>' or 'apprise:<schema>:<hash>', the hash a sha256
        prefix of the URL: stable across restarts and config reordering, useless to a reader;
        'log' for the log."""
        if self.kind == "log":
            return "log"
        digest = hashlib.sha256(self.url.value.encode()).hexdigest()[:16]
        if self.kind != "apprise":
            return f"{self.kind}:{digest}"
        schema = self.url.value.partition("://")[0].lower()
        return f"apprise:{schema if _SCHEMA.fullmatch(schema) else 'url'}:{digest}"

    def takes(self, kind: str, severity: str) -> bool:
        """Whether an alert of this drift kind and severity goes to this channel."""
        return ((not self.kinds or kind in self.kinds)
                and SEVERITIES.index(severity) >= SEVERITIES.index(self.min_severity))


@dataclass(frozen=True)
class AlertSettings:
    """The [alerts] section: how conditions become alerts and where notifications go."""

    # Where notifications go besides the log (their URLs print as Secret('****')).
    webhooks: tuple[Channel, ...] = ()
    slack_webhooks: tuple[Channel, ...] = ()
    apprise: tuple[Channel, ...] = ()
    # A condition opens an alert once it has held for this many probes in a row, and the
    # alert resolves once it has been clear for `resolve_after` probes in a row.
    open_after: int = 1
    resolve_after: int = 3
    # Flap damping: a 'resolved' is sent only once the alert has stayed resolved this long;
    # if the condition comes back before then, the alert simply continues, silently.
    cooldown_ms: int = 5 * 60_000
    remind_every_ms: int | None = None  # None: no reminders
    # Changes that happen within this long of each other go out as one notification.
    group_wait_ms: int = 30_000
    # A notification a receiver has not taken after this long is given up (and logged).
    give_up_after_ms: int = 24 * 3_600_000
    maintenance: tuple[MaintenanceWindow, ...] = ()


