"""`monitor alerts`, `ack`, `fingerprints` and `detect`: what detection found, over the store;
`monitor alerts test`: whether each notification channel works."""

from __future__ import annotations

import json
import os
from datetime import datetime

import click

from monitor.cli.common import (
    ID,
    SetupError,
    config_option,
    json_option,
    load,
    loading,
    moment,
    now,
    opened,
    since_option,
)


def _since(value: str | None) -> datetime | None:
    return moment(value, "--since")


@click.group("alerts", invoke_without_command=True)
@click.option("--open", "open_only", is_flag=True, help="Only alerts still open.")
@click.option("--target", metavar="NAME", help="Only this target.")
@since_option
@json_option
@config_option
@click.pass_context
def alerts_command(ctx: click.Context, open_only: bool, target: str | None, since: str | None,
                   as_json: bool, config_path: str | None) -> None:
    """List alerts, newest first: what changed, before and after, and why
    (`monitor alerts test`: try the notification channels)."""
    if ctx.invoked_subcommand is not None:
        return
    with loading():
        from monitor.render import text
        from monitor.store import alert_reads

    at = now()
    with opened(load(config_path).database_url) as engine:
        alerts = alert_reads.list_alerts(engine, open_only=open_only, target=target,
                                         since=moment(since, "--since", at))
    click.echo(json.dumps(alerts, indent=2) if as_json else text.render_alerts(alerts, at))


@alerts_command.command("test")
@click.argument("channel", required=False)
@config_option
@click.pass_context
def alerts_test_command(ctx: click.Context, channel: str | None, config_path: str | None) -> None:
    """Send a test notification to each channel and print how it went.

    Every channel, or CHANNEL: an id as `monitor config check` shows it (or its unambiguous
    start), or a kind (log, webhook, slack, apprise). Exits 1 if any failed."""
    from monitor.alerts.channels import configured, destination, select, send_test

    parent = ctx.parent.params.get("config_path") if ctx.parent is not None else None
    settings = load(config_path or parent)
    chosen = select(settings.alerts, channel)
    if not chosen:
        known = ", ".join(configured(settings.alerts))
        # A URL given here is not echoed: it is a secret, and output ends up in CI logs.
        named = "a URL" if "://" in (channel or "") else repr(channel)
        raise SetupError(f"no channel is named {named}: the configured ones are {known}")
    outcomes = send_test(chosen, now())
    width = max(len(key) for key in chosen)
    for key, outcome in outcomes.items():
        where = destination(chosen[key])
        # A failure's error names the destination already (redacted, as everywhere).
        shown = (f"failed: {outcome.error}" if not outcome.ok
                 else "ok" if where == "log" else f"ok  {where}")
        click.echo(f"{key:<{width}}  {shown}")
    if not all(outcome.ok for outcome in outcomes.values()):
        ctx.exit(1)


@click.command("ack")
@click.argument("alert_id", type=ID)
@click.option("--by", default=None, help="Who acknowledges (default: $USER).")
@config_option
def ack_command(alert_id: int, by: str | None, config_path: str | None) -> None:
    """Acknowledge an alert: it stays open until it resolves, but sends no more reminders."""
    from monitor.render import text
    from monitor.store import alert_reads

    at = now()
    with opened(load(config_path).database_url) as engine:
        who = by or os.environ.get("USER") or "unknown"
        alert = alert_reads.acknowledge(engine, alert_id, who, at)
    if alert is None:
        raise click.ClickException(f"no alert #{alert_id}")
    click.echo(text.render_alerts([alert], at))


@click.command("fingerprints")
@click.option("--target", metavar="NAME", help="Only this target.")
@since_option
@json_option
@config_option
def fingerprints_command(target: str | None, since: str | None, as_json: bool,
                         config_path: str | None) -> None:
    """Every system_fingerprint per target: first and last seen, count, share, and the
    timeline of changes."""
    from monitor.render import text
    from monitor.store import alert_reads

    at = now()
    with opened(load(config_path).database_url) as engine:
        found = alert_reads.fingerprint_history(engine, target=target,
                                                since=moment(since, "--since", at))
    click.echo(json.dumps(found, indent=2) if as_json else text.render_fingerprints(found, at))


@click.command("detect")
@since_option
@click.option("--notify", is_flag=True, help="Also send the events to the configured channels.")
@json_option
@config_option
def detect_command(since: str | None, notify: bool, as_json: bool,
                   config_path: str | None) -> None:
    """Re-run detection over stored history with this configuration's thresholds and list
    the events that would have fired (since --since). Nothing is stored; --notify sends them."""
    from monitor.alerts import watch
    from monitor.alerts.dispatch import notify_now
    from monitor.detect.base import event_to_json
    from monitor.render import text
    from monitor.store.records import target_id_of

    settings = load(config_path)
    with opened(settings.database_url) as engine:
        events = []
        for target in settings.targets:
            target_id = target_id_of(engine, target.name)
            if target_id is not None:
                events += watch.rerun(engine, target, target_id, _since(since))
    events.sort(key=lambda e: (e.at, e.target))
    rendered = [event_to_json(e) for e in events]
    click.echo(json.dumps(rendered, indent=2) if as_json else text.render_events(rendered))
    if notify:
        for failure in notify_now(settings.alerts, events, now()):
            click.echo(f"notification not delivered: {failure}", err=True)


COMMANDS = (alerts_command, ack_command, fingerprints_command, detect_command)
