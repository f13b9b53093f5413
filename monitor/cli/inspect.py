"""`monitor logs` and `monitor show`: what was stored, read back without sending anything."""

from __future__ import annotations

import json

import click

from monitor.cli.common import ID, config_option, json_option, load, moment, now, opened


@click.command("logs")
@click.option("-n", "--count", "count", default=20, show_default=True,
              type=click.IntRange(1, 100_000), help="How many probes to list.")
@click.option("--target", metavar="NAME", help="Only this target.")
@click.option("--since", metavar="WHEN",
              help='Only probes since then: "3h", "7d", a date or an ISO 8601 time.')
@click.option("--failed", is_flag=True, help="Only probes that failed.")
@click.option("--json", "as_json", is_flag=True,
              help="The full stored records (headers, payload, raw body) as a JSON array.")
@config_option
def logs_command(count: int, target: str | None, since: str | None, failed: bool,
                 as_json: bool, config_path: str | None) -> None:
    """List stored probes, newest first (replays included, marked as such)."""
    from monitor.render.probes import render_logs
    from monitor.store import probe_reads

    at = now()
    start = moment(since, "--since", at)
    with opened(load(config_path).database_url) as engine:
        records = probe_reads.list_probes(engine, limit=count, target=target, since=start,
                                          failed=failed)
    if as_json:
        click.echo(json.dumps(records, indent=2, ensure_ascii=True))
    else:
        click.echo(render_logs(records, at))


@click.command("show")
@click.argument("probe_id", type=ID)
@json_option
@config_option
def show_command(probe_id: int, as_json: bool, config_path: str | None) -> None:
    """Print one stored probe in full: timings, headers, payload, body, and what changed
    since the target's previous probe."""
    from monitor.render.probes import render_probe
    from monitor.store import probe_reads

    with opened(load(config_path).database_url) as engine:
        detail = probe_reads.probe_detail(engine, probe_id)
    if detail is None:
        raise click.ClickException(f"no probe #{probe_id} in this store "
                                   "(`monitor logs` lists the stored ones)")
    if as_json:
        click.echo(json.dumps(detail, indent=2, ensure_ascii=True))
    else:
        click.echo(render_probe(detail, now()))


COMMANDS = (logs_command, show_command)
