"""`monitor report`, `serve` and `prune`: the health report, the dashboard that shows it, and
the retention that keeps the history behind it small."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import click

from monitor.cli.common import (
    allowed_host_option,
    atomic_output,
    clock,
    config_option,
    hosts_allowed,
    insecure_public_option,
    load,
    moment,
    now,
    opened,
    output_path,
    refuse_public,
    web_token,
)


@click.command("report")
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
    from monitor.health import build_report, with_states
    from monitor.render import render_csv, render_html, render_table
    from monitor.store import rollups
    from monitor.watching import read_states, states_json

    # One clock read, rounded up to the second: the range's relative ends and `generated_at`
    # agree and read without microseconds, and a probe stored this second is inside it.
    read = now()
    generated = read.replace(microsecond=0) + timedelta(seconds=1 if read.microsecond else 0)
    start = moment(since, "--since", generated)
    end = moment(until, "--until", generated) or generated
    assert start is not None  # --since has a default
    if start >= end:
        raise click.BadParameter("must be before --until", param_hint="--since")
    path = output_path(output, "--output") if output is not None else None
    settings = load(config_path)
    with opened(settings.database_url) as engine:
        rollups.catch_up(engine)  # probes stored since the daemon last rolled up (or without one)
        document = with_states(
            build_report(engine, start, end, list(targets) or None, generated),
            states_json(read_states(engine, settings, generated), generated))
    renderers: dict[str, Callable[[dict[str, Any]], str]] = {
        "json": lambda d: json.dumps(d, indent=2) + "\n", "table": lambda d: render_table(d) + "\n",
        "csv": render_csv, "html": render_html}
    rendered = renderers[fmt](document)
    if path is None:
        click.echo(rendered, nl=False)
    else:
        with atomic_output(path) as out:  # the CSV's CRLF line ends are kept
            out.write(rendered)
        click.echo(f"wrote {path} ({fmt}, {len(rendered.encode()):,} bytes, "
                   f"{len(document['targets'])} targets)", err=True)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@allowed_host_option
@insecure_public_option
@config_option
def serve_command(host: str, port: int, allowed_hosts: tuple[str, ...], insecure_public: bool,
                  config_path: str | None) -> None:
    """The dashboard, /api/report, /api/alerts, /metrics and /healthz over the store.
    Set MONITOR_WEB_TOKEN to require `Authorization: Bearer <token>` (not on /healthz); a
    --host other than loopback needs it, or --insecure-public."""
    from monitor.web import app, serving

    token = web_token()
    refuse_public(host, token, insecure_public, "--host")
    settings = load(config_path)
    allowed = hosts_allowed(settings, allowed_hosts)
    with opened(settings.database_url) as engine:
        app.serve(host, port, serving.build_app(engine, token, lambda: settings, clock=clock()),
                  ready=click.echo, allowed_hosts=allowed)


@click.command("prune")
@config_option
def prune_command(config_path: str | None) -> None:
    """Apply the retention policy now: empty raw bodies and headers older than [retention]
    raw (default 30 days), after folding them into the rollups. The daemon does it daily."""
    from monitor.store import retention

    settings = load(config_path)
    with opened(settings.database_url) as engine:
        pruned_at = now()
        done = retention.prune(engine,
                               pruned_at - timedelta(milliseconds=settings.raw_retention_ms),
                               pruned_at)
    click.echo(f"folded {done['folded']} probes into rollups; emptied the raw body and headers "
               f"of {done['pruned']} probes ({done['freed_bytes']:,} bytes)"
               + ("; database vacuumed" if done["vacuumed"] else ""))


COMMANDS = (report_command, serve_command, prune_command)
