"""`monitor probe`, `run`, `status` and `demo`: sending probes and the daemon that sends them."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import TYPE_CHECKING

import click

from monitor.cli.common import (
    allowed_host_option,
    clock,
    config_option,
    hosts_allowed,
    insecure_public_option,
    load,
    loading,
    log_format_option,
    now,
    opened,
    refuse_public,
    setup_logging,
    spool_path,
    web_token,
)

if TYPE_CHECKING:
    from monitor.domain import Settings, Target


@click.command("probe")
@click.argument("names", nargs=-1, metavar="[TARGET]...")
@click.option("--json", "as_json", is_flag=True, help="Print the stored records as a JSON array.")
@config_option
def probe_command(names: tuple[str, ...], as_json: bool, config_path: str | None) -> None:
    """Probe the named targets (all if none) once and store every result."""
    with loading():
        from monitor.daemon.prober import Prober
        from monitor.render import text
        from monitor.store.probe_reads import probe_records
        from monitor.store.records import Recorder

    settings = load(config_path)
    targets = _select(settings, names)
    ids: list[int] = []
    failed = False
    with opened(settings.database_url) as engine:
        prober = Prober(Recorder(engine))
        try:
            prober.register(targets)
            width = max(len(t.name) for t in targets)
            for result, probe_id in prober.probe_all(targets):
                ids.append(probe_id)
                failed = failed or not result.ok
                if not as_json:
                    click.echo(text.probe_line(result, width))
            if as_json:
                click.echo(json.dumps(probe_records(engine, ids), indent=2, ensure_ascii=False))
        finally:
            prober.close()
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


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r}: expected HOST:PORT, like 127.0.0.1:8765",
                                 param_hint="--http")
    return host.strip("[]") or "127.0.0.1", int(port)


@click.command("run")
@click.option("--once", is_flag=True, help="Probe every target once, store, and exit.")
@log_format_option
@click.option("--spool", default="monitor-spool.jsonl", show_default=True,
              metavar="FILE", help="Where results wait while the database is unreachable.")
@click.option("--http", "http_address", metavar="HOST:PORT",
              help="Also serve the dashboard, API and /metrics there (as `monitor serve`).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes sharing the targets (by name), to use more than one core: "
                   "Python runs one thread at a time. Worker 0 also serves --http, rolls up "
                   "and notifies; each other worker spools to FILE.workerN.")
@allowed_host_option
@insecure_public_option
@config_option
def run_command(once: bool, log_format: str, spool: str, http_address: str | None,
                workers: int, allowed_hosts: tuple[str, ...], insecure_public: bool,
                config_path: str | None) -> None:
    """Probe every target on its interval until stopped (SIGTERM/SIGINT; SIGHUP reloads)."""
    if once and http_address is not None:
        raise click.UsageError("--http serves while the daemon runs and --once exits after one "
                               "round: give one or the other")
    if once and workers > 1:
        raise click.UsageError("--once probes every target once in one process: --workers "
                               "is for the daemon")
    from monitor import daemon
    from monitor.store.spool import Spool

    address = _address(http_address) if http_address is not None else None
    token = web_token()
    if address is not None:
        refuse_public(address[0], token, insecure_public, "--http")
    spool_path(spool)
    setup_logging(log_format)
    settings = load(config_path)
    allowed = hosts_allowed(settings, allowed_hosts)
    if not settings.targets:
        raise click.UsageError(f"{settings.config_path} configures no [[targets]]")
    web = (daemon.WebOptions(address[0], address[1], token, allowed)
           if address is not None else None)
    daemon.run(settings, Spool(spool), once=once, clock=clock(),
               reload=lambda: load(config_path), web=web,
               echo=lambda line: click.echo(line, err=True), workers=workers)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="The same, as one JSON document.")
@click.option("--spool", default="monitor-spool.jsonl", show_default=True,
              metavar="FILE")
@config_option
def status_command(as_json: bool, spool: str, config_path: str | None) -> None:
    """Show where the database is, how much history it holds, each target's last probe and
    what it is waiting for (baselines still learning, backoff, budget, maintenance), and the
    open alerts."""
    with loading():
        from monitor.daemon.workers import leftover_spools
        from monitor.defaults import ALIVE_WITHIN_S
        from monitor.render import text
        from monitor.store import alert_reads, db, leases
        from monitor.store.records import count_probes, count_targets, last_probes
        from monitor.store.schema import TargetKind
        from monitor.store.spool import Spool
        from monitor.watching import read_states, states_json

    spool_path(spool)
    settings = load(config_path)
    at = now()
    with opened(settings.database_url) as engine:
        status = {
            "database": db.display_url(settings.database_url),
            "schema_revision": db.current_revision(engine),
            "probes": count_probes(engine),
            "targets": count_targets(engine),
            "traffic_targets": count_targets(engine, TargetKind.TRAFFIC),
            "bytes": db.size_bytes(engine),
            # The workers' spools too (`run --workers`: <spool>.workerN beside it).
            "spool_backlog": sum(Spool(path).backlog()
                                 for path in (spool, *leftover_spools(spool, 1))),
            "last_probes": last_probes(engine),
            "instances": leases.alive(engine, at,
                                      timedelta(seconds=ALIVE_WITHIN_S)),
            # Slots not probed on purpose or missed, per target and kind (SkipKind).
            "skipped_24h": leases.skipped_by_target(engine, at - timedelta(hours=24)),
            "states": states_json(read_states(engine, settings, at), at),
            "open_alerts": alert_reads.list_alerts(engine, open_only=True),
        }
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    click.echo(text.render_status(status, at))


@click.command("demo")
@click.option(
    "--database",
    "database_url",
    default="sqlite:///monitor-demo.db",
    show_default=True,
    help="Where to store the demo's probes (its own SQLite file is replaced at each run; "
         "another database is added to).",
)
def demo_command(database_url: str) -> None:
    """Watch a built-in simulator change for a simulated quarter of an hour and see the alerts
    it raises (no API key needed). Leaves monitor.toml here, so that `monitor alerts`,
    `logs`, `report` and `serve` work afterwards."""
    from monitor import demo
    from monitor.config.checks import check_database_url

    demo.run(check_database_url(database_url, "--database"), click.echo)


COMMANDS = (probe_command, run_command, status_command, demo_command)
