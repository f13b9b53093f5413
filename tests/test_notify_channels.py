"""Apprise as a channel, routing per channel, and `monitor alerts test`: real Apprise sending
over real loopback HTTP (its `json://` schema) to tests/receiver.py, through the real outbox
on each database, with the URL's password and token looked for everywhere they must not be."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor import config
from monitor.alerting import Channel
from monitor.alerts.apprise_channel import (
    READ_TIMEOUT_S,
    AppriseSender,
    apprise_message,
    describe,
    redact,
)
from monitor.alerts.channels import configured, routed
from monitor.alerts.notifiers import AlertSummary, Notification
from monitor.cli import cli
from monitor.daemon import Daemon
from monitor.domain import DriftKind, Severity
from monitor.secrets import Secret
from monitor.sim import SimClient
from monitor.store.alert_reads import failed_attempts
from monitor.store.models import Base, DeliveryRow
from monitor.store.records import Recorder
from monitor.store.spool import Spool
from tests.conftest import MakeSettings, write_config
from tests.receiver import Receiver

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
FAST = {"warmup_probes": 5, "fingerprint_warmup_probes": 5, "fingerprint_revert_probes": 3,
        "latency_baseline_probes": 20, "latency_min_samples": 8}
PASSWORD = "pw-S3cr3tPass"
TOKEN = "tok-S3cr3tToken"


def apprise_url(receiver: Receiver, path: str = "hook") -> str:
    """An Apprise json:// URL to the receiver, with a password and a token in it."""
    return f"json://alice:{PASSWORD}@127.0.0.1:{receiver.port}/{path}/{TOKEN}"


def closed_port() -> int:
    """A loopback port nothing listens on (a receiver started and stopped)."""
    with Receiver() as receiver:
        port = receiver.port
    return port


def leaks(text: str) -> list[str]:
    return [secret for secret in (PASSWORD, TOKEN) if secret in text]


class Canary:
    """One target probed once a minute of fake clock; daemons and dispatchers read it."""

    def __init__(self, make: Callable[[], Daemon]) -> None:
        self.make = make
        self.minute = 0
        self.daemon = make()

    def now(self) -> datetime:
        return T0 + timedelta(minutes=self.minute)

    def probes(self, count: int) -> None:
        for _ in range(count):
            assert self.daemon.tick(self.now()) == 1
            self.minute += 1

    def restart(self) -> None:
        self.daemon.close()
        self.daemon = self.make()


@pytest.fixture
def canary(tmp_path: Path, engine: Engine, database_url: str, make_settings: MakeSettings,
           sim: SimClient) -> Iterator[Callable[..., Canary]]:
    made: list[Canary] = []

    def make(alerts: dict[str, Any], **environ: str) -> Canary:
        settings = make_settings({"name": "canary", "interval": "1m", "detect": FAST},
                                 alerts={"group_wait": "0s", "cooldown": "0s", **alerts},
                                 database_url=database_url, **environ)

        def daemon() -> Daemon:
            made_daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"),
                                 clock=lambda: found.now())
            made_daemon.register()
            return made_daemon

        found = Canary(daemon)
        made.append(found)
        return found

    yield make
    for found in made:
        found.daemon.close()


def outage(sim: SimClient, canary: Canary) -> None:
    """Ten good probes, three failing (availability opens, critical), three good (resolves)."""
    canary.probes(10)
    sim.update(faults={"rate": 1.0, "kinds": ["http_503"]})
    canary.probes(3)
    sim.update(faults={"rate": 0.0})
    canary.probes(3)


def text_in_database(engine: Engine) -> str:
    """Every string value of every row of every table, as one text."""
    found = []
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(select(table)):
                found += [str(value) for value in row if value is not None]
    return "\n".join(found)


# --- delivery through Apprise ---------------------------------------------------------------


def test_an_alert_reaches_an_apprise_json_url_once_and_a_restart_sends_nothing_again(
    sim: SimClient, canary: Callable[..., Canary], engine: Engine
) -> None:
    with Receiver() as receiver:
        run = canary({"apprise": ["env:APPRISE_URLS"]}, APPRISE_URLS=apprise_url(receiver))
        outage(sim, run)
        for second in range(0, 60, 10):
            run.daemon.dispatcher.run(run.now() + timedelta(seconds=second))
        received = receiver.wait_for(2)
        run.restart()  # a new daemon on the same database finds nothing left to send
        run.daemon.dispatcher.run(run.now() + timedelta(minutes=5))
        assert len(receiver.received) == 2
    (headers, opened, path), (_, resolved, _) = received
    assert path == f"/hook/{TOKEN}"
    assert headers["authorization"].startswith("Basic ")  # Apprise sent the URL's credentials
    assert opened["title"] == "canary: availability opened (critical)"
    assert opened["type"] == "failure"
    assert "canary · availability consecutive_failures · critical" in opened["message"]
    assert (resolved["title"], resolved["type"]) == (
        "canary: availability resolved (critical)", "success")
    with engine.connect() as connection:
        rows = Session(connection).execute(select(DeliveryRow).where(
            DeliveryRow.channel.startswith("apprise:"))).scalars().all()
    assert [(r.attempts, r.delivered_at is not None, r.last_error) for r in rows] == [
        (1, True, None), (1, True, None)]
    assert rows[0].destination == f"json://127.0.0.1:{receiver.port}/…"


def test_an_apprise_receiver_down_for_an_hour_gets_each_notification_once_after_it_is_back(
    sim: SimClient, canary: Callable[..., Canary], engine: Engine,
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything anyone logs, Apprise and urllib3 included
    with Receiver() as receiver:
        receiver.down()
        url = apprise_url(receiver)
        run = canary({"apprise": [url]})
        outage(sim, run)
        start = run.now()
        for second in range(0, 3600, 30):
            run.daemon.dispatcher.run(start + timedelta(seconds=second))
        assert receiver.received == []
        with engine.connect() as connection:
            waiting = Session(connection).execute(select(DeliveryRow).where(
                DeliveryRow.channel.startswith("apprise:")).order_by(DeliveryRow.id)).scalars().all()
            failed = failed_attempts(connection)
        # The first waits, retried with backoff; the second waits behind it (in order).
        assert waiting[0].attempts > 3 and waiting[1].attempts == 0
        assert waiting[0].last_error == (
            f"json://127.0.0.1:{receiver.port}/…: A Connection error occurred sending JSON "
            "notification to 127.0.0.1.")
        assert failed[waiting[0].channel] == waiting[0].attempts  # /metrics counts them
        receiver.up()
        for second in range(3600, 4200, 30):
            run.daemon.dispatcher.run(start + timedelta(seconds=second))
        run.restart()
        run.daemon.dispatcher.run(start + timedelta(seconds=4300))
        assert [body["title"] for _, body, _ in receiver.received] == [
            "canary: availability opened (critical)", "canary: availability resolved (critical)"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "failed (attempt 1), retrying" in logged
    assert leaks(logged) == [] and url not in logged
    assert leaks(text_in_database(engine)) == []


def test_an_apprise_refusal_is_recorded_with_apprises_reason(
    sim: SimClient, canary: Callable[..., Canary], engine: Engine
) -> None:
    with Receiver() as receiver:
        receiver.fail_next(1, 500)
        run = canary({"apprise": [apprise_url(receiver)]})
        outage(sim, run)
        run.daemon.dispatcher.run(run.now())
        with engine.connect() as connection:
            first = Session(connection).execute(select(DeliveryRow).where(
                DeliveryRow.channel.startswith("apprise:")).order_by(DeliveryRow.id)).scalars().first()
        assert first is not None and first.delivered_at is None and first.attempts == 1
        assert first.last_error == (f"json://127.0.0.1:{receiver.port}/…: Failed to send JSON POST "
                                    "notification: Internal server error., error=500.")
        for second in range(0, 600, 30):
            run.daemon.dispatcher.run(run.now() + timedelta(seconds=second))
        assert receiver.statuses == [500, 200, 200]


# --- routing --------------------------------------------------------------------------------


def test_each_channel_gets_only_the_severities_and_kinds_it_takes(
    sim: SimClient, canary: Callable[..., Canary], engine: Engine
) -> None:
    with Receiver() as receiver:
        critical = {"url": apprise_url(receiver, "critical"), "min_severity": "critical"}
        models = {"url": apprise_url(receiver, "models"), "kinds": ["model"]}
        webhook = {"url": f"{receiver.url}/warnings", "min_severity": "warning",
                   "kinds": ["availability", "fingerprint"]}
        run = canary({"apprise": [critical, models], "webhooks": [webhook]})
        run.probes(10)
        sim.update(aliases={"gpt-4o": "gpt-4o-2025-05-13"})  # model changes: a warning
        run.probes(1)
        run.daemon.dispatcher.run(run.now())
        sim.update(faults={"rate": 1.0, "kinds": ["http_503"]})  # availability: critical
        run.probes(3)
        run.daemon.dispatcher.run(run.now())
        receiver.wait_for(3)
        by_path = [(path.split("/")[1], body.get("title")) for _, body, path in receiver.received]
    assert sorted(by_path, key=str) == sorted([
        ("models", "canary: model opened (warning)"),
        ("critical", "canary: availability opened (critical)"),
        ("warnings", "canary: availability opened (critical)"),
    ], key=str)
    with engine.connect() as connection:
        logged = connection.execute(select(DeliveryRow.id).where(DeliveryRow.channel == "log"))
        assert len(logged.all()) == 2  # the log takes everything


def alert(kind: DriftKind, severity: Severity) -> AlertSummary:
    return AlertSummary(alert_id=1, target="t", kind=kind, key="k", severity=severity,
                        state="open", opened_at=T0, resolved_at=None, before=1, after=2,
                        explanation="x", probe_uids=())


def test_a_grouped_notification_is_cut_down_to_the_alerts_a_channel_takes() -> None:
    n = Notification(id="n1", created_at=T0, change="opened", alerts=(
        alert(DriftKind.AVAILABILITY, Severity.CRITICAL),
        alert(DriftKind.AVAILABILITY, Severity.WARNING)))
    critical = Channel("apprise", Secret("json://h/p"), min_severity="critical")
    latency = Channel("apprise", Secret("json://h/q"), kinds=("latency",))
    everything = Channel("webhook", Secret("https://h/p"))
    taken = routed(critical, n)
    assert taken is not None and [a.severity for a in taken.alerts] == [Severity.CRITICAL]
    assert (taken.id, taken.title) == ("n1", "t: availability opened (critical)")
    assert routed(latency, n) is None
    assert routed(everything, n) is n
    test = Notification(id="n2", created_at=T0, change="test", alerts=())
    assert routed(latency, test) is test  # a test goes to every channel


# --- monitor alerts test --------------------------------------------------------------------


def test_alerts_test_reports_each_channel_and_fails_if_any_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_server: Any,
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.chdir(tmp_path)
    with Receiver() as receiver:
        good = apprise_url(receiver)
        bad = f"json://bob:{PASSWORD}@127.0.0.1:{closed_port()}/down/{TOKEN}"
        path = write_config(tmp_path / "monitor.toml", [
            {"name": "t", "provider": "openai-compatible", "model": "m",
             "base_url": f"{sim_server.url}/v1"}],
            alerts={"apprise": ["env:APPRISE_URLS"], "webhooks": [f"{receiver.url}/generic"]})
        env = {"APPRISE_URLS": f"{good}, {bad}"}
        settings = config.load(str(path), environ=env)
        good_id, bad_id = (c.id for c in settings.alerts.apprise)
        webhook_id = settings.alerts.webhooks[0].id
        result = CliRunner().invoke(cli, ["alerts", "test", "-c", str(path)], env=env)
        received = receiver.wait_for(2)
        only = CliRunner().invoke(cli, ["alerts", "test", good_id, "-c", str(path)], env=env)
        receiver.wait_for(3)
        unknown = CliRunner().invoke(cli, ["alerts", "test", good, "-c", str(path)], env=env)
    assert result.exit_code == 1, result.output
    port = good.split(":")[3].split("/")[0]
    lines = result.stdout.splitlines()
    width = len(bad_id)
    assert lines == [
        "log".ljust(width) + "  ok",
        f"{webhook_id:<{width}}  ok  http://127.0.0.1:{port}/…",
        f"{good_id:<{width}}  ok  json://127.0.0.1:{port}/…",
        (f"{bad_id:<{width}}  failed: json://127.0.0.1:{bad.split(':')[3].split('/')[0]}/…: "
        "A Connection error occurred sending JSON notification to 127.0.0.1."),
    ]
    bodies = {path: body for _, body, path in received}
    assert bodies["/generic"]["change"] == "test" and bodies["/generic"]["alerts"] == []
    assert bodies[f"/hook/{TOKEN}"]["title"] == "monitor: test notification"
    assert "monitor alerts test" in bodies[f"/hook/{TOKEN}"]["message"]
    assert (only.exit_code, only.stdout.splitlines()) == (
        0, [f"{good_id}  ok  json://127.0.0.1:{port}/…"])
    assert unknown.exit_code == 2
    assert "no channel is named a URL: the configured ones are log, webhook:" in unknown.output
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for text in (result.output, only.output, unknown.output, logged):
        assert leaks(text) == [], text


def test_config_check_lists_channels_without_their_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"json://alice:{PASSWORD}@127.0.0.1:8000/hook/{TOKEN}"
    path = write_config(tmp_path / "monitor.toml", [
        {"name": "t", "provider": "openai-compatible", "model": "m",
         "base_url": "http://127.0.0.1:1/v1"}],
        alerts={"apprise": [{"url": url, "min_severity": "critical", "kinds": ["model"]},
                            f"tgram://123456789:{TOKEN}/-100"]})
    result = CliRunner().invoke(cli, ["config", "check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    channels = result.stdout.split("\nnotifications\n")[1].splitlines()
    assert [line.split()[1:] for line in channels] == [
        ["log", "takes", "every", "severity;", "every", "kind"],
        ["json://127.0.0.1:8000/…", "takes", "critical;", "model", "only", "from",
         "alerts.apprise[0]"],
        ["tgram://…", "takes", "every", "severity;", "every", "kind", "from", "alerts.apprise[1]"],
    ]
    assert leaks(result.output) == [] and "123456789" not in result.output


# --- configuration --------------------------------------------------------------------------


MINIMAL = ('[[targets]]\nname = "t"\nprovider = "openai-compatible"\nmodel = "m"\n'
           'base_url = "http://127.0.0.1:1/v1"\n')


def load(tmp_path: Path, alerts: str, **environ: str) -> config.Settings:
    path = tmp_path / "monitor.toml"
    path.write_text(MINIMAL + "[alerts]\n" + alerts)
    return config.load(str(path), environ=environ)


def test_apprise_urls_from_the_file_a_variable_and_a_routing_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    several = (f"mailto://alice:{PASSWORD}@example.com ,\n"
               f"ntfy://ntfy.sh/{TOKEN},json://h.example/p?to=a@x.org,b@x.org")
    settings = load(tmp_path, 'apprise = ["env:APPRISE_URLS", "pover://user@token", '
                    '{ url = "json://h.example/hook", min_severity = "warning", '
                    'kinds = ["model", "fingerprint"] }]\n'
                    'webhooks = [{ url = "https://hooks.example.com/x", kinds = ["quota"] }]\n',
                    APPRISE_URLS=several)
    channels = settings.alerts.apprise
    assert [(c.url.value, c.origin, c.min_severity, c.kinds) for c in channels] == [
        (f"mailto://alice:{PASSWORD}@example.com", "alerts.apprise[0] (APPRISE_URLS, URL 1)",
         "info", ()),
        (f"ntfy://ntfy.sh/{TOKEN}", "alerts.apprise[0] (APPRISE_URLS, URL 2)", "info", ()),
        ("json://h.example/p?to=a@x.org,b@x.org", "alerts.apprise[0] (APPRISE_URLS, URL 3)",
         "info", ()),
        ("pover://user@token", "alerts.apprise[1]", "info", ()),
        ("json://h.example/hook", "alerts.apprise[2]", "warning", ("model", "fingerprint")),
    ]
    assert [c.id.split(":")[:2] for c in channels] == [
        ["apprise", "mailto"], ["apprise", "ntfy"], ["apprise", "json"], ["apprise", "pover"],
        ["apprise", "json"]]
    assert settings.alerts.webhooks[0].kinds == ("quota",)
    assert next(iter(configured(settings.alerts))) == "log"
    assert leaks(repr(settings)) == []


@pytest.mark.parametrize(
    ("alerts", "environ", "message"),
    [
        pytest.param('apprise = [{ url = "json://h/p", kinds = ["modle"] }]', {},
                     'alerts.apprise[0].kinds[0]: expected one of "fingerprint", "model", '
                     '"latency", "quota", "availability", "output", "quality", got \'modle\'',
                     id="unknown-kind"),
        pytest.param('webhooks = [{ url = "https://h/p", min_severity = "urgent" }]', {},
                     'alerts.webhooks[0].min_severity: expected one of "info", "warning", '
                     '"critical", got \'urgent\'', id="bad-severity"),
        pytest.param('slack_webhooks = [{ url = "https://h/p", min_severity = "critical", '
                     'kind = ["model"] }]', {},
                     "alerts.slack_webhooks[0].kind: expected a known key (kinds, min_severity, "
                     'url), got an unknown key (did you mean "kinds"?)', id="unknown-key"),
        pytest.param('apprise = [{ kinds = ["model"] }]', {},
                     "alerts.apprise[0].url: expected a URL or \"env:VARIABLE\" (the table's "
                     "`url`), got nothing", id="table-without-url"),
        pytest.param(f'apprise = ["nope://alice:{PASSWORD}@host/{TOKEN}"]', {},
                     'alerts.apprise[0]: expected an Apprise URL like "mailto://user:password@'
                     'example.com" or "json://host/path", or "env:VARIABLE", got one Apprise '
                     "cannot use (Unparseable URL …)", id="unknown-schema"),
        pytest.param('apprise = ["env:APPRISE_URLS"]', {"APPRISE_URLS": f"json://h/p mailto://{TOKEN}"},
                     "alerts.apprise[0] (APPRISE_URLS, URL 2): expected an Apprise URL like "
                     '"mailto://user:password@example.com" or "json://host/path", or '
                     '"env:VARIABLE", got one Apprise cannot use', id="bad-url-in-variable"),
        pytest.param('apprise = ["env:APPRISE_URLS"]', {},
                     "alerts.apprise[0]: expected environment variable APPRISE_URLS to be set "
                     "to one or more Apprise URLs, got nothing", id="variable-unset"),
        pytest.param(f'apprise = ["{TOKEN}"]', {},
                     'alerts.apprise[0]: expected an Apprise URL like "mailto://user:password@'
                     'example.com" or "json://host/path", or "env:VARIABLE", got a string that '
                     "is not one", id="not-a-url"),
        pytest.param("apprise = [42]", {}, "alerts.apprise[0]: expected an Apprise URL like "
                     '"mailto://user:password@example.com" or "json://host/path", or '
                     '"env:VARIABLE", got 42', id="not-a-string"),
        pytest.param('apprise = "json://h/p"', {}, 'alerts.apprise: expected an array of URLs '
                     'like ["env:APPRISE_URLS", "mailto://user:password@host"], got '
                     "'json://h/p'", id="not-an-array"),
        pytest.param(f'apprise = ["json://h/{TOKEN}", "env:MORE"]', {"MORE": f"json://h/{TOKEN}"},
                     "alerts.apprise[1] (MORE): expected a URL not configured twice (it is also "
                     "alerts.apprise[0]), got the same URL again", id="duplicate"),
    ],
)
def test_channel_config_errors_name_the_key_and_keep_the_url_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alerts: str, environ: dict[str, str],
    message: str, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(config.ConfigError) as caught:
        load(tmp_path, alerts + "\n", **environ)
    assert str(caught.value).startswith(f"{tmp_path / 'monitor.toml'}: {message}")
    if "not-a-string" not in message:
        assert leaks(str(caught.value)) == []
    assert leaks("\n".join(r.getMessage() for r in caplog.records)) == []


# --- the pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(f"json://alice:{PASSWORD}@127.0.0.1:8000/hook/{TOKEN}",
                     "json://127.0.0.1:8000/…", id="address-and-port"),
        pytest.param(f"mailto://alice:{PASSWORD}@gmail.com", "mailto://gmail.com/…", id="mail"),
        pytest.param(f"ntfy://ntfy.sh/{TOKEN}", "ntfy://ntfy.sh/…", id="dns-name"),
        pytest.param(f"tgram://123456789:{TOKEN}/-100", "tgram://…", id="token-as-host"),
        pytest.param(f"discord://1234567/{TOKEN}", "discord://…", id="id-as-host"),
        pytest.param(f"pagerduty://{TOKEN}@{TOKEN}", "pagerduty://…", id="keys-as-userinfo"),
        pytest.param("not a url", "<invalid URL>", id="invalid"),
    ],
)
def test_describe_shows_the_host_only_when_it_is_a_name_or_an_address(url: str,
                                                                        shown: str) -> None:
    assert describe(url) == shown


def test_redact_takes_out_every_part_of_the_url_apprise_may_echo() -> None:
    url = f"json://alice:{PASSWORD}@127.0.0.1:8000/hook/{TOKEN}?+X-Key=Key!{TOKEN}#frag"
    said = (f"Unparseable URL {url}; privacy form JSON://alice:p...s@127.0.0.1/t...n. "
            f"JSON POST URL: http://127.0.0.1:8000/hook/{TOKEN} user alice password {PASSWORD} "
            f"key Key%21{TOKEN} fragment frag")
    assert redact(said, url) == ("Unparseable URL …; privacy form …. JSON POST URL: "
                                 "http://127.0.0.1:8000/…/… user … password … key … fragment …")


def test_an_apprise_message_escapes_model_output_and_counts_what_it_leaves_out() -> None:
    hostile = alert(DriftKind.OUTPUT, Severity.WARNING)
    hostile = AlertSummary(**{**hostile.__dict__, "after": "line\nbreak\x1b[31m",
                              "target": "t\r\nInjected: yes"})
    n = Notification(id="n1", created_at=T0, change="opened", alerts=(hostile,) * 25)
    message = apprise_message(n)
    assert message["type"] == "warning"
    assert "\x1b" not in message["body"] and "\\x1b[31m" in message["body"]
    assert "t\\r\\nInjected: yes · output k · warning" in message["body"]
    assert message["body"].endswith("and 5 more")


def test_a_url_asking_apprise_for_a_longer_timeout_gets_ours() -> None:
    sender = AppriseSender()
    client = sender._client("c", "json://127.0.0.1:9/p?rto=600&cto=600")
    assert client is not None
    plugin = client[0]
    assert plugin.socket_read_timeout == READ_TIMEOUT_S
    assert plugin.socket_connect_timeout <= READ_TIMEOUT_S
