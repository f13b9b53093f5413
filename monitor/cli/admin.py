"""`monitor db upgrade`, `config check` and `sim`: the schema, the configuration and the
simulator, the commands around monitoring rather than monitoring itself."""

from __future__ import annotations

import json

import click

from monitor.cli.common import config_option, load


@click.group("db")
def db_group() -> None:
    """Manage the database schema."""


@db_group.command("upgrade")
@config_option
def db_upgrade(config_path: str | None) -> None:
    """Bring the database to the schema this monitor needs (creates it if empty)."""
    from monitor.store import db

    settings = load(config_path)
    url = settings.database_url
    before = db.current_revision(db.create(url))
    db.upgrade(url)
    head = db.head_revision()
    where = db.display_url(url)
    if before == head:
        click.echo(f"{where} is already at {head}")
    else:
        click.echo(f"{where} upgraded from {before or 'empty'} to {head}")


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved targets as JSON.")
@config_option
def config_check(as_json: bool, config_path: str | None) -> None:
    """Validate the config and show each resolved target and notification channel, keys and
    URLs masked."""
    from monitor.alerts.channels import summary
    from monitor.render.check import describe, render_channels, render_check

    settings = load(config_path)
    if as_json:
        click.echo(json.dumps(describe(settings), indent=2, ensure_ascii=False))
    else:
        click.echo(render_check(settings) + "\n\n" + render_channels(summary(settings.alerts)))


@click.command("sim")
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
    if recorded:
        from monitor.cli.replay import serve_recorded

        serve_recorded(config_path, host, port, target, latency)
        return
    from monitor import sim

    sim.serve(host, port, scenario_path, seed, echo=lambda line: click.echo(line))


COMMANDS = (db_group, config_group, sim_command)
