"""/metrics over a real store: current at every scrape with or without a daemon, the series
for alerting on the monitor itself (staleness, open alerts by kind, failed notifications),
and a body that Prometheus' own `promtool check metrics` accepts."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select

from monitor.alerts.channels import configured
from monitor.cli import cli
from monitor.daemon import Daemon
from monitor.domain import Settings
from monitor.sim import SimClient
from monitor.store.models import DeliveryRow, ProbeRow
from monitor.store.records import Recorder
from monitor.store.spool import Spool
from monitor.web import serving
from tests.conftest import MakeSettings
from tests.receiver import Receiver
from tests.report_fixtures import running

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(engine: Engine, settings: Settings) -> str:
    """One GET /metrics from the app `monitor serve` runs, over loopback."""
    with running(serving.build_app(engine, None, lambda: settings)) as url:
        answer = requests.get(f"{url}/metrics", timeout=10)
    assert answer.status_code == 200
    return answer.text


def samples(body: str, family: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body) if f.name == family
            for s in f.samples}


def newest_started(engine: Engine) -> float:
    with engine.connect() as connection:
        newest = connection.execute(
            select(func.max(ProbeRow.started_at)).where(ProbeRow.replay_of.is_(None))).scalar_one()
    return float(newest.timestamp())


def test_scrapes_are_current_without_a_daemon_and_ignore_replays(
        tmp_path: Path, engine: Engine, database_url: str, make_settings: MakeSettings,
        sim: SimClient) -> None:
    settings = make_settings({"name": "a"}, database_url=database_url)
    config = ["--config", str(tmp_path / "monitor.toml")]

    def monitor(*args: str) -> None:
        result = CliRunner().invoke(cli, [*args, *config])
        assert result.exit_code in (0, 1), result.output  # 1: a probe failed, as asked

    for _ in range(3):
        monitor("probe")  # no daemon: nothing rolls up but the scrape itself
    body = scrape(engine, settings)
    assert samples(body, "monitor_probes") == {
        ("monitor_probes_total", (("outcome", "ok"), ("target", "a"))): 3}
    assert samples(body, "monitor_last_probe_success") == {
        ("monitor_last_probe_success", (("target", "a"),)): 1}
    sim.enqueue({"fault": "http_503"})
    monitor("probe")
    body = scrape(engine, settings)
    assert samples(body, "monitor_probes")[
        ("monitor_probes_total", (("outcome", "http_server_error"), ("target", "a")))] == 1
    assert samples(body, "monitor_last_probe_success") == {
        ("monitor_last_probe_success", (("target", "a"),)): 0}
    canary_at = newest_started(engine)
    assert samples(body, "monitor_last_probe_timestamp_seconds") == {
        ("monitor_last_probe_timestamp_seconds", (("target", "a"),)): canary_at}
    with engine.connect() as connection:
        first = connection.execute(select(func.min(ProbeRow.id))).scalar_one()
    monitor("replay", str(first))  # a replay is newer, and succeeds: neither is the canary
    body = scrape(engine, settings)
    assert samples(body, "monitor_last_probe_success") == {
        ("monitor_last_probe_success", (("target", "a"),)): 0}
    assert samples(body, "monitor_last_probe_timestamp_seconds") == {
        ("monitor_last_probe_timestamp_seconds", (("target", "a"),)): canary_at}


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run `apt-get install -y prometheus` (.ci/run "
                    "installs it); /metrics must be checked by Prometheus' own linter")
    return found


FAST = {"warmup_probes": 3, "fingerprint_warmup_probes": 3}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running_receiver:
        yield running_receiver


def test_open_alerts_by_kind_failed_deliveries_and_a_body_promtool_accepts(
        tmp_path: Path, engine: Engine, database_url: str, make_settings: MakeSettings,
        sim: SimClient, receiver: Receiver, promtool: str) -> None:
    clock = [T0]
    settings = make_settings(
        {"name": "a", "interval": "1m", "detect": FAST}, {"name": "b", "interval": "1m"},
        alerts={"group_wait": "0s", "webhooks": [f"{receiver.url}/hook"]},
        database_url=database_url)
    daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"),
                    clock=lambda: clock[0])
    daemon.register()
    try:
        body = scrape(engine, settings)
        # Before any notification: the log channel reads 0, so a rate over the sum is 0.
        assert samples(body, "monitor_notifications_failed") == {
            ("monitor_notifications_failed_total", (("channel", "log"),)): 0}

        def minute() -> None:
            assert daemon.tick(clock[0]) == 2
            clock[0] += timedelta(minutes=1)

        for _ in range(4):
            minute()
        sim.update(fingerprints=[{"value": "fp_new0000001"}])
        minute()
        receiver.fail_next(2, 500)
        daemon.dispatcher.run(clock[0])
        body = scrape(engine, settings)
        # The webhook leaves the configuration: its delivery is given up unsent, which is
        # no failed attempt.
        daemon.dispatcher.policy = replace(settings.alerts, webhooks=())
        daemon.dispatcher.run(clock[0] + timedelta(minutes=5))
        after = scrape(engine, settings)
        with engine.connect() as connection:
            gave_up = connection.execute(select(DeliveryRow.gave_up_at, DeliveryRow.attempts)
                                         .where(DeliveryRow.channel != "log")).one()
    finally:
        daemon.close()
    alerts = samples(body, "monitor_open_alerts")
    opened = {labels: value for (_, labels), value in alerts.items() if value}
    # b is still learning its fingerprint pool (30 probes): the new fingerprint joins it.
    assert opened == {(("kind", "fingerprint"), ("severity", "warning"), ("target", "a")): 1}
    # Zeros for every kind and severity a detector can raise, per target: 9, not 7 x 3.
    assert len(alerts) == 2 * 9
    webhook = next(channel for channel in configured(settings.alerts) if channel != "log")
    assert samples(body, "monitor_notifications_failed") == {
        ("monitor_notifications_failed_total", (("channel", "log"),)): 0,
        ("monitor_notifications_failed_total", (("channel", webhook),)): 1}
    assert gave_up.gave_up_at is not None and gave_up.attempts == 1
    assert samples(after, "monitor_notifications_failed") == samples(
        body, "monitor_notifications_failed")
    checked = subprocess.run([promtool, "check", "metrics"], input=body, check=False,
                             capture_output=True, text=True, timeout=60)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, ""), body
