"""What every command module shares: MonitorError as a one-line exit, the --config option,
the clock, and reading a point in time from an option."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from monitor.clock import Clock, utc_now
from monitor.durations import parse_since
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


def clock() -> Clock:
    """The clock the running command reads: the real one, unless whoever invoked the command
    passed another as its context object (`cli.main(obj=clock)`, `CliRunner().invoke(cli,
    args, obj=clock)`), as tests do over history they stored under a fixed clock."""
    context = click.get_current_context(silent=True)
    found = context.obj if context is not None else None
    return found if callable(found) else utc_now


def now() -> datetime:
    """The running command's clock, read once."""
    return clock()()


def moment(value: str | None, option: str) -> datetime | None:
    """The point in time an option names (see durations.parse_since), or None if not given."""
    if value is None:
        return None
    found = parse_since(value, now())
    if found is None:
        raise click.BadParameter(
            f'{value!r}: expected a duration back from now ("24h", "7d"), a date '
            '("2026-11-01") or an ISO 8601 time', param_hint=option)
    return found
