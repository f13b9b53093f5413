"""Maintenance windows: reading [[alerts.maintenance]] and deciding what they cover (pure)."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from monitor.alerts.maintenance import (
    MaintenanceWindow,
    OneOff,
    Recurring,
    active_window,
    parse_windows,
)
from monitor.errors import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def windows(toml: str, known_targets: list[str] | None = None) -> tuple[MaintenanceWindow, ...]:
    """The windows of a config file holding `toml` (one or more [[alerts.maintenance]])."""
    items = tomllib.loads(toml)["alerts"]["maintenance"]
    return parse_windows(items, "monitor.toml", known_targets=known_targets)


def window(body: str) -> MaintenanceWindow:
    (only,) = windows("[[alerts.maintenance]]\n" + body)
    return only


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def covered(w: MaintenanceWindow, *moments: str) -> list[bool]:
    """Whether `w` silences target "gpt-4o" at each UTC moment ("2026-03-29T01:30")."""
    return [active_window([w], "gpt-4o", utc(m)) is w for m in moments]


# --- reading ------------------------------------------------------------------------------------


def test_one_off_window_reads_toml_datetimes_and_iso_strings() -> None:
    found = windows(
        """
        [[alerts.maintenance]]
        name = "provider migration"
        reason = "moving to the EU endpoint"
        start = 2026-12-01T02:00:00Z
        end = 2026-12-01T04:00:00Z
        targets = ["gpt-4o"]

        [[alerts.maintenance]]
        start = "2026-12-01T03:00:00+01:00"
        duration = "90m"
        """
    )
    assert found == (
        MaintenanceWindow(
            name="provider migration",
            when=OneOff(utc("2026-12-01T02:00"), utc("2026-12-01T04:00")),
            targets=("gpt-4o",),
            reason="moving to the EU endpoint",
        ),
        MaintenanceWindow(
            name="alerts.maintenance[1]",  # a window without a name is called by its key
            when=OneOff(utc("2026-12-01T02:00"), utc("2026-12-01T03:30")),
        ),
    )


def test_recurring_window_reads_days_local_times_and_zone() -> None:
    found = windows(
        """
        [[alerts.maintenance]]
        name = "weekly deploy"
        days = ["sat", "Sun"]
        start = "02:00"
        duration = "2h"
        timezone = "Europe/Berlin"

        [[alerts.maintenance]]
        start = 23:30:00
        end = "01:00"
        timezone = "UTC"
        """
    )
    assert found[0].when == Recurring((5, 6), time(2, 0), timedelta(hours=2), BERLIN)
    assert found[1].when == Recurring(tuple(range(7)), time(23, 30), time(1, 0), ZoneInfo("UTC"))


def error(toml: str, known_targets: list[str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        windows(toml, known_targets)
    return info.value


def test_an_unknown_time_zone_is_named_with_its_full_key() -> None:
    err = error(
        """
        [[alerts.maintenance]]
        start = 2026-12-01T02:00:00Z
        duration = "1h"

        [[alerts.maintenance]]
        start = "02:00"
        duration = "2h"
        timezone = "Mars/Base"
        """
    )
    assert str(err) == (
        'monitor.toml: alerts.maintenance[1].timezone: expected an IANA time zone like '
        "\"Europe/Berlin\", got 'Mars/Base'"
    )


ONE_OFF = 'start = 2026-12-01T02:00:00Z\nend = 2026-12-01T04:00:00Z\n'
WEEKLY = 'start = "02:00"\nduration = "2h"\ntimezone = "Europe/Berlin"\n'


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        pytest.param(ONE_OFF + "timezon = 'UTC'", "timezon",
                     'got an unknown key (did you mean "timezone"?)', id="unknown-key"),
        pytest.param('end = "04:00"', "start", "got nothing", id="no-start"),
        pytest.param('start = "soon"\nduration = "1h"', "start",
                     "expected a date and time with a UTC offset", id="start-garbage"),
        pytest.param('start = "2:00"\nduration = "1h"', "start", "got '2:00'", id="start-h-mm"),
        pytest.param("start = 2026-12-01T02:00:00\nduration = '1h'", "start",
                     "got 2026-12-01T02:00:00", id="naive-toml-datetime"),
        pytest.param("start = '2026-12-01T02:00:00'\nduration = '1h'", "start",
                     "got '2026-12-01T02:00:00'", id="naive-iso-string"),
        pytest.param("start = 2026-12-01\nduration = '1h'", "start", "got 2026-12-01",
                     id="date-only"),
        pytest.param("start = 2026-12-01T04:00:00Z\nend = 2026-12-01T02:00:00Z", "end",
                     "expected a time after start (2026-12-01T04:00:00+00:00)", id="end-before-start"),
        pytest.param("start = 2026-12-01T04:00:00Z\nend = 2026-12-01T04:00:00Z", "end",
                     "expected a time after start", id="end-equals-start"),
        pytest.param("start = 2026-12-01T02:00:00Z\nend = 2026-12-01T04:00:00", "end",
                     "expected a date and time with a UTC offset", id="naive-end"),
        pytest.param("start = 2026-12-01T02:00:00Z", "end", 'expected an end, or a duration',
                     id="no-end-or-duration"),
        pytest.param(ONE_OFF + "duration = '2h'", "duration", "either end or duration",
                     id="end-and-duration"),
        pytest.param("start = 2026-12-01T02:00:00Z\nduration = '2'", "duration",
                     'expected a duration like "2h"', id="duration-without-unit"),
        pytest.param("start = 2026-12-01T02:00:00Z\nduration = '0s'", "duration",
                     "longer than 0s", id="zero-duration"),
        pytest.param("start = 2026-12-01T02:00:00Z\nduration = '99999999999d'", "duration",
                     'at most "3650d"', id="duration-beyond-the-calendar"),
        pytest.param("start = 2026-12-01T02:00:00Z\nduration = 7200", "duration",
                     "got 7200", id="duration-number"),
        pytest.param(ONE_OFF + "days = ['sat']", "days", "no days in a one-off window",
                     id="days-on-one-off"),
        pytest.param(ONE_OFF + "timezone = 'UTC'", "timezone", "no timezone in a one-off window",
                     id="zone-on-one-off"),
        pytest.param('start = "02:00"\nduration = "2h"', "timezone",
                     'an IANA time zone like "Europe/Berlin", got nothing', id="no-zone"),
        pytest.param('start = "02:00"\nduration = "2h"\ntimezone = "Europe"', "timezone",
                     "got 'Europe'", id="zone-directory"),
        pytest.param('start = "02:00"\nduration = "2h"\ntimezone = "../../etc/passwd"',
                     "timezone", "got '../../etc/passwd'", id="zone-path"),
        pytest.param('start = "02:00"\nduration = "2h"\ntimezone = 1', "timezone", "got 1",
                     id="zone-number"),
        pytest.param(WEEKLY + "days = ['sat', 'saturday']", "days[1]",
                     "expected a day: mon, tue, wed, thu, fri, sat, sun, got 'saturday'",
                     id="unknown-day"),
        pytest.param(WEEKLY + "days = []", "days", "omit for every day", id="no-days"),
        pytest.param(WEEKLY + "days = 'sat'", "days", "got 'sat'", id="days-not-array"),
        pytest.param('start = "02:00"\nduration = "8d"\ntimezone = "UTC"', "duration",
                     'at most "7d"', id="recurring-longer-than-a-week"),
        pytest.param('start = "02:00"\nend = "25:00"\ntimezone = "UTC"', "end",
                     "got '25:00'", id="end-not-a-time"),
        pytest.param('start = "02:00"\nend = "02:00"\ntimezone = "UTC"', "end",
                     "other than start (02:00)", id="end-equals-local-start"),
        pytest.param(ONE_OFF + "targets = []", "targets", "omit for all", id="no-targets"),
        pytest.param(ONE_OFF + "targets = 'gpt-4o'", "targets", "got 'gpt-4o'",
                     id="targets-not-array"),
        pytest.param(ONE_OFF + "targets = ['gpt-4o', 3]", "targets[1]", "got 3",
                     id="target-not-string"),
        pytest.param(ONE_OFF + "name = ''", "name", "a non-empty string", id="empty-name"),
        pytest.param(ONE_OFF + "reason = true", "reason", "got true", id="reason-bool"),
    ],
)
def test_every_parse_error_names_its_key(body: str, key: str, message: str) -> None:
    err = error("[[alerts.maintenance]]\n" + body)
    assert err.path == "monitor.toml"
    assert err.key == f"alerts.maintenance[0].{key}"
    assert message in str(err)


def test_a_misspelt_target_is_refused_when_targets_are_known() -> None:
    err = error("[[alerts.maintenance]]\n" + ONE_OFF + "targets = ['gpt4o']", ["claude", "gpt-4o"])
    assert err.key == "alerts.maintenance[0].targets[0]"
    assert str(err).endswith("expected the name of a target (claude, gpt-4o), got 'gpt4o'")


@pytest.mark.parametrize(
    ("items", "key", "message"),
    [
        pytest.param({"start": "02:00"}, "alerts.maintenance", "got a table", id="a-table"),
        pytest.param(["02:00"], "alerts.maintenance[0]", "expected a table", id="not-tables"),
    ],
)
def test_the_array_itself_must_be_an_array_of_tables(items: object, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_windows(items, "monitor.toml")
    assert info.value.key == key
    assert message in str(info.value)


def test_no_windows_configured() -> None:
    assert parse_windows([], "monitor.toml") == ()


# --- what a window covers -----------------------------------------------------------------------


def test_one_off_window_covers_start_up_to_but_not_including_end() -> None:
    w = window(ONE_OFF)
    moments = ["2026-12-01T01:59:59", "2026-12-01T02:00", "2026-12-01T03:59:59", "2026-12-01T04:00"]
    assert covered(w, *moments) == [False, True, True, False]


def test_active_window_accepts_any_aware_time_and_refuses_naive() -> None:
    w = window(ONE_OFF)
    assert active_window([w], "gpt-4o", datetime(2026, 12, 1, 3, 30, tzinfo=BERLIN)) is w
    with pytest.raises(ValueError):
        active_window([w], "gpt-4o", datetime(2026, 12, 1, 3, 0))


def test_target_filter_and_first_match_wins() -> None:
    only_gpt, everyone = windows(
        "[[alerts.maintenance]]\n" + ONE_OFF + "targets = ['gpt-4o']\n"
        "[[alerts.maintenance]]\n" + ONE_OFF
    )
    at = utc("2026-12-01T03:00")
    assert active_window([only_gpt], "gpt-4o", at) is only_gpt
    assert active_window([only_gpt], "claude", at) is None
    assert active_window([only_gpt, everyone], "gpt-4o", at) is only_gpt
    assert active_window([only_gpt, everyone], "claude", at) is everyone
    assert active_window([only_gpt, everyone], "claude", utc("2026-12-02T03:00")) is None


def test_recurring_window_crosses_midnight_into_the_next_day() -> None:
    # Saturday 23:00 to Sunday 01:00 in Berlin (UTC+1 in December).
    w = window('days = ["sat"]\nstart = "23:00"\nend = "01:00"\ntimezone = "Europe/Berlin"')
    assert covered(
        w,
        "2026-12-05T21:59",  # Sat 22:59
        "2026-12-05T22:00",  # Sat 23:00
        "2026-12-05T23:30",  # Sun 00:30: the window began on Saturday
        "2026-12-06T00:00",  # Sun 01:00: over
        "2026-12-04T23:30",  # Sat 00:30: no window began on Friday
        "2026-12-06T22:30",  # Sun 23:30: Sunday is not a start day
    ) == [False, True, True, False, False, False]


def test_days_are_judged_in_the_windows_own_zone() -> None:
    # Monday 00:00-01:00 in Berlin is still Sunday in UTC.
    w = window('days = ["mon"]\nstart = "00:00"\nduration = "1h"\ntimezone = "Europe/Berlin"')
    assert covered(w, "2026-12-06T23:30", "2026-12-07T23:30") == [True, False]


def test_a_long_recurring_window_spans_the_weekend() -> None:
    w = window('days = ["fri"]\nstart = "18:00"\nduration = "62h"\ntimezone = "UTC"')
    assert covered(w, "2026-12-04T17:59", "2026-12-06T12:00", "2026-12-07T07:59",
                   "2026-12-07T08:00") == [False, True, True, False]


def test_a_seven_day_window_never_ends() -> None:
    w = window('days = ["mon"]\nstart = "00:00"\nduration = "7d"\ntimezone = "Europe/Berlin"')
    hourly = [f"2026-03-{day:02d}T{hour:02d}:17" for day in range(23, 31) for hour in range(24)]
    assert all(covered(w, *hourly))


# Berlin: 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET (both 01:00 UTC).


def test_berlin_spring_forward_shifts_a_skipped_start_by_the_gap() -> None:
    # 02:30 does not exist that night: the window starts as the clock jumps, at 03:30 CEST.
    w = window('start = "02:30"\nduration = "1h"\ntimezone = "Europe/Berlin"')
    assert covered(w, "2026-03-29T01:29", "2026-03-29T01:30", "2026-03-29T02:29",
                   "2026-03-29T02:30") == [False, True, True, False]


def test_berlin_spring_forward_end_time_is_wall_clock_and_duration_is_elapsed() -> None:
    by_end = window('start = "01:00"\nend = "04:00"\ntimezone = "Europe/Berlin"')
    by_duration = window('start = "01:00"\nduration = "3h"\ntimezone = "Europe/Berlin"')
    # 01:00 CET is 00:00 UTC; 04:00 CEST is 02:00 UTC: two real hours that night.
    assert covered(by_end, "2026-03-29T00:00", "2026-03-29T01:59", "2026-03-29T02:00") == [
        True, True, False]
    assert covered(by_duration, "2026-03-29T02:59", "2026-03-29T03:00") == [True, False]
    # The night before, the same window is three hours long.
    assert covered(by_end, "2026-03-28T02:59", "2026-03-28T03:00") == [True, False]


def test_berlin_fall_back_takes_the_first_of_a_repeated_start() -> None:
    # 02:00 happens twice; the window starts at the first (00:00 UTC) and lasts two real hours.
    w = window('start = "02:00"\nduration = "2h"\ntimezone = "Europe/Berlin"')
    assert covered(w, "2026-10-24T23:59", "2026-10-25T00:00", "2026-10-25T01:59",
                   "2026-10-25T02:00") == [False, True, True, False]


def test_berlin_fall_back_night_window_is_an_hour_longer() -> None:
    # 00:00 CEST (22:00 UTC) to 06:00 CET (05:00 UTC): seven real hours.
    w = window('start = "00:00"\nend = "06:00"\ntimezone = "Europe/Berlin"')
    assert covered(w, "2026-10-24T21:59", "2026-10-24T22:00", "2026-10-25T04:59",
                   "2026-10-25T05:00") == [False, True, True, False]


def test_berlin_window_crossing_midnight_into_spring_forward() -> None:
    # Saturday 23:00 CET (22:00 UTC) to Sunday 03:30 CEST (01:30 UTC).
    w = window('days = ["sat"]\nstart = "23:00"\nend = "03:30"\ntimezone = "Europe/Berlin"')
    assert covered(w, "2026-03-28T21:59", "2026-03-28T22:00", "2026-03-29T01:29",
                   "2026-03-29T01:30") == [False, True, True, False]


# New York: 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC); 2026-11-01 02:00 EDT -> 01:00 EST.


def test_new_york_spring_forward_shifts_a_skipped_start_by_the_gap() -> None:
    w = window('days = ["sun"]\nstart = "02:15"\nduration = "30m"\ntimezone = "America/New_York"')
    # 02:15 EST would be 07:15 UTC, which is 03:15 EDT.
    assert covered(w, "2026-03-08T07:14", "2026-03-08T07:15", "2026-03-08T07:44",
                   "2026-03-08T07:45") == [False, True, True, False]


def test_new_york_fall_back_repeated_hour() -> None:
    by_duration = window('start = "01:30"\nduration = "1h"\ntimezone = "America/New_York"')
    by_end = window('start = "01:00"\nend = "02:00"\ntimezone = "America/New_York"')
    # 01:30 EDT is 05:30 UTC; an hour later the clock reads 01:30 again (EST).
    assert covered(by_duration, "2026-11-01T05:29", "2026-11-01T05:30", "2026-11-01T06:29",
                   "2026-11-01T06:30") == [False, True, True, False]
    # 01:00 EDT (05:00 UTC) to 02:00 EST (07:00 UTC): both passes through the 01:00 hour.
    assert covered(by_end, "2026-11-01T04:59", "2026-11-01T06:45", "2026-11-01T07:00") == [
        False, True, False]


def test_recurring_window_repeats_only_on_its_days() -> None:
    w = window('days = ["sat", "sun"]\nstart = "02:00"\nduration = "2h"\n'
               'timezone = "Europe/Berlin"')
    # 2026-12-04 is a Friday; 03:00 Berlin is 02:00 UTC.
    days = [f"2026-12-{day:02d}T02:00" for day in range(4, 9)]
    assert covered(w, *days) == [False, True, True, False, False]
