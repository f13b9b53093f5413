"""The `monitor` command. Thin: parse options, call one function, render.

Exit codes: 0 success; 1 a probe failed (it is still stored) or a runtime error;
2 usage, configuration or schema errors.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from sqlalchemy import Engine

from monitor import config as config_module
from monitor import report, serving, watch, web
from monitor.alerts.dispatch import notify_now
from monitor.cli_common import (
    ID,
    MonitorGroup,
    atomic_output,
    clock,
    config_option,
    failure,
    moment,
    now,
    output_path,
    remember_database,
    spool_path,
)
from monitor.cli_replay import export_command, import_command, replay_command, serve_recorded
from monitor.daemon import HEARTBEAT_EVERY_S, Daemon, Prober, Service
from monitor.detect.base import event_to_json
from monitor.domain import Settings, Target
from monitor.errors import MonitorError, StoreUnavailable
from monitor.render import render_csv, render_html, render_table
from monitor.reporting import build_report
from monitor.store import alert_reads, db, leases, retention, rollups
from monitor.store.records import (
    Recorder,
    count_probes,
    count_targets,
    last_probes,
    probe_records,
    target_id_of,
)
from monitor.store.spool import Spool


def _load(config_path: str | None) -> Settings:
    try:
        settings = config_module.load(config_path)
    except MonitorError as error:
        raise failure(error) from None
    remember_database(settings.database_url)
    return settings


@click.group(cls=MonitorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="monitor")
def cli() -> None:
    """Watch hosted LLM APIs for drift: canary probes, full-fidelity history, alerts."""


@cli.command("probe")
@click.argument("names", nargs=-1, metavar="[TARGET]...")
@click.option("--json", "as_json", is_flag=True, help="Print the stored records as a JSON array.")
@config_option
def probe_command(names: tuple[str, ...], as_json: bool, config_path: str | None) -> None:
    """Probe the named targets (all if none) once and store every result."""
    settings = _load(config_path)
    targets = _select(settings, names)
    try:
        engine = db.open_store(settings.database_url)
    except MonitorError as error:
        raise failure(error) from None
    prober = Prober(Recorder(engine))
    ids: list[int] = []
    failed = False
    try:
        prober.register(targets)
        width = max(len(t.name) for t in targets)
        for result, probe_id in prober.probe_all(targets):
            ids.append(probe_id)
            failed = failed or not result.ok
            if not as_json:
                click.echo(report.probe_line(result, width))
        if as_json:
            click.echo(json.dumps(probe_records(engine, ids), indent=2, ensure_ascii=False))
    finally:
        prober.close()
        engine.dispose()
    sys.exit(1 if failed else 0)


def _select(settings: Settings, names: tuple[str, ...]) -> list[Target]:
    if not settings.targets:
        raise click.UsageError(f"{settings.config_path} configures no [[targets]]")
    if not names:
        return list(settings.targets)
    by_name = {t.name: t for t in settings.targets}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise click.UsageError(
            f"unknown target {', '.join(map(repr, unknown))}; "
            f"{settings.config_path} has {', '.join(by_name)}"
        )
    return [by_name[n] for n in dict.fromkeys(names)]


@cli.group("db")
def db_group() -> None:
    """Manage the database schema."""


@db_group.command("upgrade")
@config_option
def db_upgrade(config_path: str | None) -> None:
    """Bring the database to the schema this monitor needs (creates it if empty)."""
    settings = _load(config_path)
    url = settings.database_url
    try:
        before = db.current_revision(db.create(url))
        db.upgrade(url)
    except MonitorError as error:
        raise failure(error) from None
    head = db.head_revision()
    where = db.display_url(url)
    if before == head:
        click.echo(f"{where} is already at {head}")
    else:
        click.echo(f"{where} upgraded from {before or 'empty'} to {head}")


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved targets as JSON.")
@config_option
def config_check(as_json: bool, config_path: str | None) -> None:
    """Validate the config and show each resolved target, keys masked."""
    settings = _load(config_path)
    if as_json:
        click.echo(json.dumps(config_module.describe(settings), indent=2, ensure_ascii=False))
    else:
        click.echo(config_module.render_check(settings))


@cli.command("sim")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=0, show_default=True, help="0 picks a free port.")
@click.option("--scenario", "scenario_path", metavar="FILE", help="Scenario TOML file.")
@click.option("--seed", type=int, help="Seed for ids, latency jitter and fingerprints.")
@click.option("--recorded", is_flag=True,
              help="Answer with the stored answers of the configured database instead.")
@click.option("--target", metavar="NAME", help="--recorded: only this target's answers.")
@click.option("--latency", is_flag=True, help="--recorded: wait the recorded latency.")
@config_option
def sim_command(host: str, port: int, scenario_path: str | None, seed: int | None,
                recorded: bool, target: str | None, latency: bool,
                config_path: str | None) -> None:
    """Serve an OpenAI-compatible API on loopback for demos and tests; with --recorded, the
    answers stored in the database, byte for byte, for offline tests of your own app."""
    from monitor import sim

    if recorded:
        serve_recorded(config_path, host, port, target, latency)
        return
    try:
        sim.serve(host, port, scenario_path, seed, echo=lambda line: click.echo(line))
    except MonitorError as error:
        raise failure(error) from None


@cli.command("demo")
@click.option(
    "--database",
    "database_url",
    default="sqlite:///monitor-demo.db",
    show_default=True,
    help="Where to store the demo's probes.",
)
@click.option("--rounds", default=4, show_default=True, help="Rounds of probes to send.")
def demo_command(database_url: str, rounds: int) -> None:
    """Probe a built-in simulator for a few rounds and show what was stored (no API key needed)."""
    from monitor import demo

    try:
        demo.run(config_module.check_database_url(database_url, "--database"), rounds,
                 click.echo)
    except MonitorError as error:
        raise failure(error) from None


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }, ensure_ascii=False)


def _setup_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonLines() if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger("monitor")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r}: expected HOST:PORT, like 127.0.0.1:8765",
                                 param_hint="--http")
    return host.strip("[]") or "127.0.0.1", int(port)


# Read from the environment, never a flag: `ps` would show a flag to every local user.
TOKEN_ENV = "MONITOR_WEB_TOKEN"


def _web_token() -> str | None:
    """MONITOR_WEB_TOKEN, or None when it is not set. Set but empty, blank or padded is a
    mistake (an empty token would open the server to anyone), never shown back."""
    token = os.environ.get(TOKEN_ENV)
    if token is None:
        return None
    if not token.strip():
        raise click.UsageError(f"{TOKEN_ENV} is set but {'empty' if not token else 'blank'}: "
                               "set it to a token, or unset it")
    flaw = config_module.control_character(token)
    if flaw is not None or token != token.strip():
        what = f"contains {flaw}" if flaw is not None else "has leading or trailing spaces"
        raise click.UsageError(f"{TOKEN_ENV} {what}: a client could never send it in a "
                               "header")
    return token


_allowed_host_option = click.option(
    "--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
    help="A Host name the dashboard answers to besides its address and loopback (a reverse "
         "proxy's, a DNS name); repeat for several. Also [web] allowed_hosts.")
_insecure_public_option = click.option(
    "--insecure-public", is_flag=True,
    help=f"Serve on a non-loopback address without {TOKEN_ENV}: anyone who can reach it reads "
         "every probe.")


def _allowed_hosts(settings: Settings, names: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return settings.allowed_hosts + config_module.check_hostnames(names, "--allowed-host")
    except MonitorError as error:
        raise failure(error) from None


def _refuse_public(host: str, token: str | None, insecure_public: bool, option: str) -> None:
    """The dashboard shows every probe: off loopback only behind a token, unless asked."""
    if web.is_loopback(host) or token is not None:
        return
    shown = host or "every address"
    if not insecure_public:
        raise click.UsageError(
            f"{option} {shown} is reachable from other machines and {TOKEN_ENV} is not set: "
            f"set {TOKEN_ENV} to require a token, or pass --insecure-public to serve anyone")
    click.echo(f"warning: serving on {shown} without {TOKEN_ENV} (--insecure-public): anyone "
               "who can reach it can read every probe", err=True)


@cli.command("run")
@click.option("--once", is_flag=True, help="Probe every target once, store, and exit.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON object per line, for log shippers.")
@click.option("--spool", default="monitor-spool.jsonl", show_default=True,
              metavar="FILE", help="Where results wait while the database is unreachable.")
@click.option("--http", "http_address", metavar="HOST:PORT",
              help="Also serve the dashboard, API and /metrics there (as `monitor serve`).")
@_allowed_host_option
@_insecure_public_option
@config_option
def run_command(once: bool, log_format: str, spool: str, http_address: str | None,
                allowed_hosts: tuple[str, ...], insecure_public: bool,
                config_path: str | None) -> None:
    """Probe every target on its interval until stopped (SIGTERM/SIGINT; SIGHUP reloads)."""
    if once and http_address is not None:
        raise click.UsageError("--http serves while the daemon runs and --once exits after one "
                               "round: give one or the other")
    address = _address(http_address) if http_address is not None else None
    token = _web_token()
    if address is not None:
        _refuse_public(address[0], token, insecure_public, "--http")
    spool_path(spool)
    _setup_logging(log_format)
    settings = _load(config_path)
    allowed = _allowed_hosts(settings, allowed_hosts)
    if not settings.targets:
        raise click.UsageError(f"{settings.config_path} configures no [[targets]]")
    lock = db.InstanceLock(settings.database_url) if settings.database_url.startswith(
        "sqlite") else None
    try:
        if lock is not None:
            lock.acquire()
    except MonitorError as error:
        raise failure(error) from None
    try:
        engine = db.open_store(settings.database_url)
    except StoreUnavailable as error:
        # The canary matters most when things are failing: probe now, spool, store later.
        logging.getLogger("monitor").error("%s; probing anyway and spooling to %s until it is "
                                           "back", error, spool)
        engine = db.create(settings.database_url)
    except MonitorError as error:
        raise failure(error) from None
    daemon = Daemon(settings, Recorder(engine), Spool(spool), clock=clock())
    try:
        daemon.register()
        if once:
            daemon.tick(daemon.clock())
            daemon.dispatch(flush=True)  # no one will be around in group_wait
            daemon.roll_up()
            daemon.close()
        else:
            service = Service(daemon, lambda: config_module.load(config_path))
            server = None
            if address is not None:
                host, port = address
                app = serving.build_app(engine, token,
                                        scheduler_alive=lambda: service.scheduler.running)
                try:
                    server = web.WebServer(app, host, port, allowed_hosts=allowed).start()
                except MonitorError as error:
                    raise failure(error) from None
                click.echo(f"listening on {server.url}", err=True)
            try:
                service.run()
            finally:
                if server is not None:
                    server.stop()
    finally:
        engine.dispose()
        if lock is not None:
            lock.release()


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="The same, as one JSON document.")
@click.option("--spool", default="monitor-spool.jsonl", show_default=True,
              metavar="FILE")
@config_option
def status_command(as_json: bool, spool: str, config_path: str | None) -> None:
    """Show where the database is, how much history it holds and each target's last probe."""
    spool_path(spool)
    settings = _load(config_path)
    try:
        engine = db.open_store(settings.database_url)
    except MonitorError as error:
        raise failure(error) from None
    try:
        status = {
            "database": db.display_url(settings.database_url),
            "schema_revision": db.current_revision(engine),
            "probes": count_probes(engine),
            "targets": count_targets(engine),
            "bytes": db.size_bytes(engine),
            "spool_backlog": Spool(spool).backlog(),
            "last_probes": last_probes(engine),
            "instances": leases.alive(engine, now(),
                                      timedelta(seconds=3 * HEARTBEAT_EVERY_S)),
        }
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    click.echo(report.render_status(status))


def _since(value: str | None) -> datetime | None:
    return moment(value, "--since")


def _open(settings: Settings) -> Engine:
    try:
        return db.open_store(settings.database_url)
    except MonitorError as error:
        raise failure(error) from None


_since_option = click.option("--since", metavar="WHEN",
                             help='"24h", "7d", a date (2026-11-01) or an ISO 8601 time.')
_json_option = click.option("--json", "as_json", is_flag=True, help="As JSON.")


@cli.command("alerts")
@click.option("--open", "open_only", is_flag=True, help="Only alerts still open.")
@click.option("--target", metavar="NAME", help="Only this target.")
@_since_option
@_json_option
@config_option
def alerts_command(open_only: bool, target: str | None, since: str | None, as_json: bool,
                   config_path: str | None) -> None:
    """List alerts, newest first: what changed, before and after, and why."""
    engine = _open(_load(config_path))
    try:
        alerts = alert_reads.list_alerts(engine, open_only=open_only, target=target,
                                         since=_since(since))
    finally:
        engine.dispose()
    click.echo(json.dumps(alerts, indent=2) if as_json else report.render_alerts(alerts))


@cli.command("ack")
@click.argument("alert_id", type=ID)
@click.option("--by", default=None, help="Who acknowledges (default: $USER).")
@config_option
def ack_command(alert_id: int, by: str | None, config_path: str | None) -> None:
    """Acknowledge an alert: it stays open until it resolves, but sends no more reminders."""
    engine = _open(_load(config_path))
    try:
        who = by or os.environ.get("USER") or "unknown"
        alert = alert_reads.acknowledge(engine, alert_id, who, now())
    finally:
        engine.dispose()
    if alert is None:
        raise click.ClickException(f"no alert #{alert_id}")
    click.echo(report.render_alerts([alert]))


@cli.command("fingerprints")
@click.option("--target", metavar="NAME", help="Only this target.")
@_since_option
@_json_option
@config_option
def fingerprints_command(target: str | None, since: str | None, as_json: bool,
                         config_path: str | None) -> None:
    """Every system_fingerprint per target: first and last seen, count, share, and the
    timeline of changes."""
    engine = _open(_load(config_path))
    try:
        found = alert_reads.fingerprint_history(engine, target=target, since=_since(since))
    finally:
        engine.dispose()
    click.echo(json.dumps(found, indent=2) if as_json else report.render_fingerprints(found))


@cli.command("detect")
@_since_option
@click.option("--notify", is_flag=True, help="Also send the events to the configured channels.")
@_json_option
@config_option
def detect_command(since: str | None, notify: bool, as_json: bool,
                   config_path: str | None) -> None:
    """Re-run detection over stored history with this configuration's thresholds and list
    the events that would have fired (since --since). Nothing is stored; --notify sends them."""
    settings = _load(config_path)
    engine = _open(settings)
    try:
        events = []
        for target in settings.targets:
            target_id = target_id_of(engine, target.name)
            if target_id is not None:
                events += watch.rerun(engine, target, target_id, _since(since))
    finally:
        engine.dispose()
    events.sort(key=lambda e: (e.at, e.target))
    rendered = [event_to_json(e) for e in events]
    click.echo(json.dumps(rendered, indent=2) if as_json else report.render_events(rendered))
    if notify:
        for failure in notify_now(settings.alerts, events, now()):
            click.echo(f"notification not delivered: {failure}", err=True)


@cli.command("report")
@click.option("--since", default="24h", show_default=True, metavar="WHEN",
              help='"24h", "7d", a date (2026-11-01) or an ISO 8601 time.')
@click.option("--until", metavar="WHEN", help="End of the range (default: now).")
@click.option("--target", "targets", multiple=True, metavar="NAME",
              help="Only this target (repeat for several).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "html"]),
              default="table", show_default=True)
@click.option("-o", "--output", metavar="FILE", help="Write to FILE instead of stdout.")
@config_option
def report_command(since: str, until: str | None, targets: tuple[str, ...], fmt: str,
                   output: str | None, config_path: str | None) -> None:
    """Per-target health over a time range: success, errors, latency percentiles, tokens,
    fingerprints, models, rate limits and alerts (docs/report.md)."""
    generated = now()
    start = _since(since)
    end = _since(until) or generated
    assert start is not None  # --since has a default
    if start >= end:
        raise click.BadParameter("must be before --until", param_hint="--since")
    path = output_path(output, "--output") if output is not None else None
    engine = _open(_load(config_path))
    try:
        rollups.catch_up(engine)  # probes stored since the daemon last rolled up (or without one)
        document = build_report(engine, start, end, list(targets) or None, generated)
    finally:
        engine.dispose()
    renderers: dict[str, Callable[[dict[str, Any]], str]] = {
        "json": lambda d: json.dumps(d, indent=2) + "\n", "table": lambda d: render_table(d) + "\n",
        "csv": render_csv, "html": render_html}
    rendered = renderers[fmt](document)
    if path is None:
        click.echo(rendered, nl=False)
    else:
        with atomic_output(path) as out:  # the CSV's CRLF line ends are kept
            out.write(rendered)


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@_allowed_host_option
@_insecure_public_option
@config_option
def serve_command(host: str, port: int, allowed_hosts: tuple[str, ...], insecure_public: bool,
                  config_path: str | None) -> None:
    """The dashboard, /api/report, /api/alerts, /metrics and /healthz over the store.
    Set MONITOR_WEB_TOKEN to require `Authorization: Bearer <token>` (not on /healthz); a
    --host other than loopback needs it, or --insecure-public."""
    token = _web_token()
    _refuse_public(host, token, insecure_public, "--host")
    settings = _load(config_path)
    allowed = _allowed_hosts(settings, allowed_hosts)
    engine = _open(settings)
    try:
        web.serve(host, port, serving.build_app(engine, token), ready=click.echo,
                  allowed_hosts=allowed)
    except MonitorError as error:
        raise failure(error) from None
    finally:
        engine.dispose()


@cli.command("prune")
@config_option
def prune_command(config_path: str | None) -> None:
    """Apply the retention policy now: empty raw bodies and headers older than [retention]
    raw (default 30 days), after folding them into the rollups. The daemon does it daily."""
    settings = _load(config_path)
    engine = _open(settings)
    pruned_at = now()
    try:
        done = retention.prune(engine,
                               pruned_at - timedelta(milliseconds=settings.raw_retention_ms),
                               pruned_at)
    finally:
        engine.dispose()
    click.echo(f"folded {done['folded']} probes into rollups; emptied the raw body and headers "
               f"of {done['pruned']} probes ({done['freed_bytes']:,} bytes)"
               + ("; database vacuumed" if done["vacuumed"] else ""))


cli.add_command(replay_command)
cli.add_command(export_command)
cli.add_command(import_command)


def main() -> None:
    cli()
