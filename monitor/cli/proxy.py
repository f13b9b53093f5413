"""`monitor proxy`: a pass-through in front of the apps' LLM API that records every call like a
probe (or, with --no-record, only logs it)."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import TYPE_CHECKING

import click

from monitor.cli.common import (
    SetupError,
    config_option,
    env_token,
    log_format_option,
    remember_database,
    setup_logging,
    spool_path,
)

if TYPE_CHECKING:
    from monitor.config import ProxySettings

# Read from the environment, never a flag: `ps` would show a flag to every local user.
PROXY_TOKEN_ENV = "MONITOR_PROXY_TOKEN"
_DEFAULT_PORT = 8788  # defaults.PROXY_PORT, which test_cli checks; a literal keeps --help light


@click.command("proxy")
@click.option("--host", default="127.0.0.1", show_default=True,
              help=f"Address to listen on; off loopback only with {PROXY_TOKEN_ENV} set.")
@click.option("--port", default=_DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="0 picks a free port.")
@click.option("--insecure-public", is_flag=True,
              help=f"Listen on a non-loopback address without {PROXY_TOKEN_ENV}: anyone who can "
                   "reach it can spend the quota of the keys your apps send.")
@click.option("--no-record", is_flag=True,
              help="Only log each call (route, method, path, status, ms); store nothing.")
@click.option("--spool", default="monitor-proxy-spool.jsonl", show_default=True, metavar="FILE",
              help="Where records wait while the database is unreachable.")
@log_format_option
@config_option
def proxy_command(host: str, port: int, insecure_public: bool, no_record: bool, spool: str,
                  log_format: str, config_path: str | None) -> None:
    """Forward calls under /ROUTE/ to that route's upstream API and record each one.
    Apps point their base URL at it, e.g. OPENAI_BASE_URL=http://127.0.0.1:8788/openai/v1."""
    from monitor import config
    from monitor.errors import ProxyError
    from monitor.proxy.server import refuse_public
    from monitor.store.spool import claimed

    if not no_record:
        spool_path(spool)
    token = env_token(PROXY_TOKEN_ENV)
    loaded = config.load_proxy(config_path)
    remember_database(loaded.settings.database_url)
    setup_logging(log_format)
    try:
        refuse_public(host, token, insecure_public)  # before the store is opened
    except ProxyError as error:
        raise SetupError(str(error)) from None
    with nullcontext() if no_record else claimed(spool):
        _forward(loaded, host, port, token, insecure_public, no_record, spool)


def _forward(loaded: ProxySettings, host: str, port: int, token: str | None,
             insecure_public: bool, no_record: bool, spool: str) -> None:
    """Listen and forward until a signal, then let the calls in flight finish."""
    from monitor import httpd
    from monitor.errors import ProxyError
    from monitor.proxy.server import Proxy
    from monitor.proxy.sink import make_sink

    sink = make_sink(loaded.settings, loaded.routes, record=not no_record, spool_path=spool)
    try:
        proxy = Proxy(loaded.routes, sink, host, port, token=token,
                      insecure_public=insecure_public).start()
    except ProxyError as error:
        sink.close()
        raise SetupError(str(error)) from None
    click.echo(f"listening on {proxy.url}")
    for route in loaded.routes:
        click.echo(f"  {proxy.url}/{route.name}/ -> {route.upstream} ({route.provider})")
    if token is None and not httpd.is_loopback(host):
        click.echo(f"warning: listening on {host or 'every address'} without "
                   f"{PROXY_TOKEN_ENV} (--insecure-public): anyone who can reach it can spend "
                   "your apps' keys", err=True)
    stop = threading.Event()
    # The handlers stay installed while calls drain: a second signal exits at once (130).
    with httpd.stop_signals(lambda _: stop.set(), cold_exit=130):
        try:
            stop.wait()
        except KeyboardInterrupt:  # off the main thread no handler is installed
            pass
        click.echo("stopping: calls in flight finish first (a second signal exits at once)")
        proxy.stop()
        sink.close()
    click.echo("stopped")


COMMANDS = (proxy_command,)
