"""What every command module shares: MonitorError as a one-line exit (MonitorGroup, the one
place it is mapped), loading the config, opening and disposing the store, the shared options,
the clock, reading a point in time from an option, and writing an output file whole or not at
all."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from monitor.errors import ConfigError, MonitorError, SchemaNotAtHead

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from monitor.clock import Clock
    from monitor.domain import Settings

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
    """The `monitor` group: any MonitorError a command raises is one line (`failure`), and a
    SQLite file that turns out corrupt or read-only in the middle of a command (a report
    writing its rollups to a read-only file) is one line and exit 1, like the same trouble
    found when the store opens. Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MonitorError as error:
            raise failure(error) from None
        except Exception as error:
            url = ctx.meta.get(_DATABASE_URL)
            if url is None:  # no store was opened, so this is no database's trouble
                raise
            from monitor.store import db

            found = db.diagnose(error, url)
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


def load(config_path: str | None) -> Settings:
    """The settings `--config` names, remembered as the running command's database."""
    from monitor import config as config_module

    settings = config_module.load(config_path)
    remember_database(settings.database_url)
    return settings


# Whether this process ends when its command does: set by the console script (cli.main), never
# where commands run in-process (tests, CliRunner), which must collect their garbage as usual.
_ends_with_the_command = False


def ends_with_the_command() -> None:
    """Declare that this process exits when the command it runs does (cli.main)."""
    global _ends_with_the_command
    _ends_with_the_command = True


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Run a command's imports with the cyclic garbage collector paused.

    Importing SQLAlchemy, requests and the rest makes tens of thousands of objects that live
    until the process exits; the collector, run every few hundred allocations, scans them again
    and again while they are made, and once more at exit, and frees nothing. In a process that
    ends with its command, what the imports made is then frozen (gc.freeze: left out of every
    later collection, the one at exit included); elsewhere the collector just resumes. The
    command itself runs with the collector on either way. About a fifth of the CPU of `monitor
    probe` (docs/benchmarks.md, "Command start-up")."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _ends_with_the_command:
            gc.freeze()
        if paused:
            gc.enable()


@contextlib.contextmanager
def opened(url: str) -> Iterator[Engine]:
    """The store at `url`, checked to be at the schema head, disposed when the block ends."""
    from monitor.store import db

    remember_database(url)
    engine = db.open_store(url)
    try:
        yield engine
    finally:
        engine.dispose()


since_option = click.option("--since", metavar="WHEN",
                            help='"24h", "7d", a date (2026-11-01) or an ISO 8601 time.')
json_option = click.option("--json", "as_json", is_flag=True, help="As JSON.")


def clock() -> Clock:
    """The clock the running command reads: the real one, unless whoever invoked the command
    passed another as its context object (`cli.main(obj=clock)`, `CliRunner().invoke(cli,
    args, obj=clock)`), as tests do over history they stored under a fixed clock."""
    from monitor.clock import utc_now

    context = click.get_current_context(silent=True)
    found = context.obj if context is not None else None
    return found if callable(found) else utc_now


def now() -> datetime:
    """The running command's clock, read once."""
    return clock()()


def moment(value: str | None, option: str, at: datetime | None = None) -> datetime | None:
    """The point in time an option names (see durations.parse_since), or None if not given.
    A duration counts back from `at` when given (a command that reads its clock once), else
    from a fresh clock read."""
    if value is None:
        return None
    from monitor.durations import OutOfRange, parse_since

    try:
        found = parse_since(value, at if at is not None else now())
    except OutOfRange as error:
        raise click.BadParameter(str(error), param_hint=option) from None
    if found is None:
        raise click.BadParameter(
            f'{value!r}: expected a duration back from now ("24h", "7d"), a date '
            '("2026-11-01") or an ISO 8601 time', param_hint=option)
    return found


# The largest id a row can have (BIGINT, SQLite's INTEGER): a larger one cannot be looked up,
# and the database driver would fail on it rather than find nothing.
ID_MAX = 2**63 - 1
ID = click.IntRange(1, ID_MAX)


def output_path(value: str, option: str) -> Path:
    """FILE for `option`, checked before any work is done: not a directory, in a directory
    that exists and can be written (a usage error otherwise)."""
    path = Path(value)
    if path.is_dir():
        raise click.BadParameter(f"{value!r} is a directory; give a file name", param_hint=option)
    parent = path.parent
    if not parent.is_dir():
        raise click.BadParameter(f"{value!r}: {str(parent)!r} is not a directory",
                                 param_hint=option)
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise click.BadParameter(f"{value!r}: permission denied", param_hint=option)
    return path


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[IO[str]]:
    """A text file that replaces `path` once written whole. It is made beside `path` (the
    same file system, so the replace is atomic, and never elsewhere: it holds probe data) and
    removed if anything fails; the error is then one line, exit 1."""
    import tempfile

    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp")
    except OSError as error:
        raise click.ClickException(f"cannot write {path}: {error.strerror or error}") from None
    try:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # what a plain open() would have made
        os.chmod(temporary, mode)
        # newline="": what is written is written as is (a CSV's CRLF line ends included).
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            yield file
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise click.ClickException(f"cannot write {path}: {error.strerror or error}"
                                       ) from None
        raise


def spool_path(value: str, option: str = "--spool") -> str:
    """A spool file that can be created and appended to, checked at start rather than when
    the database first fails (a usage error otherwise). Creates its directory, as the spool
    would, and nothing else."""
    path = Path(value)
    if path.is_dir():
        raise click.BadParameter(f"{value!r} is a directory; give a file name", param_hint=option)
    existing = next(p for p in path.parents if p.exists())
    if not existing.is_dir():
        raise click.BadParameter(f"{value!r}: {str(existing)!r} is not a directory",
                                 param_hint=option)
    import tempfile  # here: it is not free, and most commands never spool

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with open(path, "ab"):
                pass
        else:
            # A file of our own beside it, never the spool itself: a daemon may be creating
            # that one this instant, and deleting it would lose what it wrote.
            with tempfile.TemporaryFile(dir=path.parent):
                pass
    except OSError as error:
        raise click.BadParameter(f"{value!r} cannot be written: {error.strerror or error}",
                                 param_hint=option) from None
    return value


# Read from the environment, never a flag: `ps` would show a flag to every local user.
TOKEN_ENV = "MONITOR_WEB_TOKEN"


def web_token() -> str | None:
    """MONITOR_WEB_TOKEN, or None when it is not set (see env_token)."""
    return env_token(TOKEN_ENV)


def env_token(variable: str) -> str | None:
    """A token from the environment variable `variable`, or None when it is not set. Set but
    empty, blank or padded is a mistake (an empty token would open the server to anyone),
    never shown back."""
    token = os.environ.get(variable)
    if token is None:
        return None
    if not token.strip():
        raise click.UsageError(f"{variable} is set but {'empty' if not token else 'blank'}: "
                               "set it to a token, or unset it")
    from monitor.config.checks import control_character

    flaw = control_character(token)
    if flaw is not None or token != token.strip():
        what = f"contains {flaw}" if flaw is not None else "has leading or trailing spaces"
        raise click.UsageError(f"{variable} {what}: a client could never send it in a "
                               "header")
    return token


allowed_host_option = click.option(
    "--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
    help="A Host name the dashboard answers to besides its address and loopback (a reverse "
         "proxy's, a DNS name); repeat for several. Also [web] allowed_hosts.")
insecure_public_option = click.option(
    "--insecure-public", is_flag=True,
    help=f"Serve on a non-loopback address without {TOKEN_ENV}: anyone who can reach it reads "
         "every probe.")


def hosts_allowed(settings: Settings, names: tuple[str, ...]) -> tuple[str, ...]:
    """The Host names the dashboard answers to: the config's, then `--allowed-host`'s."""
    from monitor.config.checks import check_hostnames

    return settings.allowed_hosts + check_hostnames(names, "--allowed-host")


def refuse_public(host: str, token: str | None, insecure_public: bool, option: str) -> None:
    """The dashboard shows every probe: off loopback only behind a token, unless asked."""
    from monitor.httpd import is_loopback

    if is_loopback(host) or token is not None:
        return
    shown = host or "every address"
    if not insecure_public:
        raise click.UsageError(
            f"{option} {shown} is reachable from other machines and {TOKEN_ENV} is not set: "
            f"set {TOKEN_ENV} to require a token, or pass --insecure-public to serve anyone")
    click.echo(f"warning: serving on {shown} without {TOKEN_ENV} (--insecure-public): anyone "
               "who can reach it can read every probe", err=True)


log_format_option = click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="json: one JSON object per line, for log shippers.")


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }, ensure_ascii=False)


def setup_logging(log_format: str) -> None:
    """Log `monitor.*` to stderr at INFO, as text lines or JSON objects."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonLines() if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger("monitor")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
