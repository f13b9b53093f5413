"""What every command module shares: MonitorError as a one-line exit, the --config option,
and reading a point in time from an option."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from monitor.durations import OutOfRange, parse_since
from monitor.errors import ConfigError, MonitorError, SchemaNotAtHead

F = TypeVar("F", bound=Callable[..., Any])


class SetupError(click.ClickException):
    exit_code = 2


def failure(error: MonitorError) -> click.ClickException:
    """A MonitorError as one line: exit 2 when the setup is wrong (config, schema), 1 otherwise."""
    if isinstance(error, ConfigError | SchemaNotAtHead):
        return SetupError(str(error))
    return click.ClickException(str(error))


def config_option(function: F) -> F:
    return click.option(
        "--config",
        "-c",
        "config_path",
        metavar="FILE",
        help="Config file (default: $MONITOR_CONFIG, else ./monitor.toml).",
    )(function)


def moment(value: str | None, option: str) -> datetime | None:
    """The point in time an option names (see durations.parse_since), or None if not given."""
    if value is None:
        return None
    try:
        found = parse_since(value, datetime.now(UTC))
    except OutOfRange as error:
        raise click.BadParameter(str(error), param_hint=option) from None
    if found is None:
        raise click.BadParameter(
            f'{value!r}: expected a duration back from now ("24h", "7d"), a date '
            '("2026-11-01") or an ISO 8601 time', param_hint=option)
    return found
