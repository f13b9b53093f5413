"""What every command module shares: MonitorError as a one-line exit, the --config option,
and reading a point in time from an option."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from sqlalchemy.exc import DBAPIError

from monitor.durations import parse_since
from monitor.errors import ConfigError, MonitorError, SchemaNotAtHead
from monitor.store import db

F = TypeVar("F", bound=Callable[..., Any])


class SetupError(click.ClickException):
    exit_code = 2


def failure(error: MonitorError) -> click.ClickException:
    """A MonitorError as one line: exit 2 when the setup is wrong (config, schema), 1 otherwise."""
    if isinstance(error, ConfigError | SchemaNotAtHead):
        return SetupError(str(error))
    return click.ClickException(str(error))


# Where a command's database is, for saying what is wrong with its file (MonitorGroup).
_DATABASE_URL = "monitor.database_url"


def remember_database(url: str) -> None:
    """Note the database the running command uses (click's meta, shared by its contexts)."""
    context = click.get_current_context(silent=True)
    if context is not None:
        context.meta[_DATABASE_URL] = url


class MonitorGroup(click.Group):
    """The `monitor` group: a SQLite file that turns out corrupt or read-only in the middle
    of a command (a report writing its rollups to a read-only file) is one line and exit 1,
    like the same trouble found when the store opens."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DBAPIError as error:
            url = ctx.meta.get(_DATABASE_URL)
            found = db.diagnose(error, url) if url else None
            if found is None:
                raise
            raise failure(found) from None


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
    found = parse_since(value, datetime.now(UTC))
    if found is None:
        raise click.BadParameter(
            f'{value!r}: expected a duration back from now ("24h", "7d"), a date '
            '("2026-11-01") or an ISO 8601 time', param_hint=option)
    return found
