"""Drift scenarios end to end: the daemon's step (real HTTP to the simulator, real databases)
raises exactly one alert per injected change, with its before/after, and resolves it after
the simulator reverts; notifications go through the outbox to the log and a real webhook."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from monitor.alerting import AlertSettings
from monitor.alerts import lifecycle
from monitor.cli import cli
from monitor.daemon import Daemon
from monitor.domain import AlertState
from monitor.sim import SimClient
from monitor.store import db
from monitor.store.models import (
    AlertRow,
    DeliveryRow,
    DriftEventRow,
    NotificationRow,
    OutboxRow,
    ProbeRow,
)
from monitor.store.records import Recorder
from monitor.store.spool import Spool
from tests.conftest import MakeSettings, write_config
from tests.receiver import Receiver
from tests.waiting import wait_until

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
# Short baselines, so a scenario takes tens of probes, not hundreds.
FAST = {"warmup_probes": 5, "fingerprint_warmup_probes": 5, "fingerprint_revert_probes": 3,
        "latency_baseline_probes": 20, "latency_min_samples": 8}


class Run:
    """One target probed once a minute of fake clock (the HTTP and the database are real).
    The daemon, its dispatcher and the CLI (`obj=run.now`) all read this one clock."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.minute = 0

    def now(self) -> datetime:
        """The fake clock: the minute of the next probe, just after the last one."""
        return T0 + timedelta(minutes=self.minute)

    def probes(self, count: int) -> None:
        for _ in range(count):
            assert self.daemon.tick(self.now()) == 1
            self.minute += 1

    def alerts(self) -> list[AlertRow]:
        """The alerts raised, less those on times the test machine adds to (MACHINE_NOISE)."""
        with self.daemon.recorder.engine.connect() as connection:
            rows = connection.execute(select(AlertRow).order_by(AlertRow.id)).all()
        return [a for a in rows if (a.kind, a.key) not in MACHINE_NOISE]


# Times measured by the probe's own clock over real loopback HTTP: a machine whose cores are
# busy with other work slows them for stretches, which the latency detector rightly reports.
# These end-to-end tests judge latency on openai-processing-ms (set by the simulator), and
# which metric explains a slowdown is test_detect_latency's deterministic question.
MACHINE_NOISE = {("latency", "total_ms"), ("latency", "time_to_first_token_ms")}


@pytest.fixture
def run(tmp_path: Path, engine: Engine, database_url: str, make_settings: MakeSettings,
        sim: SimClient) -> Iterator[Callable[..., Run]]:
    made: list[Daemon] = []

    def make(alerts: dict[str, Any] | None = None, **target: Any) -> Run:
        settings = make_settings(
            {"name": "canary", "interval": "1m", "detect": FAST, **target},
            alerts={"group_wait": "0s", **(alerts or {})}, database_url=database_url,
        )
        daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"),
                        clock=lambda: canary.now())
        daemon.register()
        made.append(daemon)
        canary = Run(daemon)
        return canary

    yield make
    for daemon in made:
        daemon.close()


def only_alert(run: Run) -> AlertRow:
    alerts = [a for a in run.alerts() if a.state != AlertState.PENDING]
    assert len(alerts) == 1, [(a.kind, a.key, a.state) for a in alerts]
    return alerts[0]


def near(value: float) -> Callable[[Any], bool]:
    return lambda found: abs(found["p50_ms"] - value) < value * 0.2


Check = Callable[[Any], bool] | Any  # a predicate, or the exact value

# Before and after, as the alert must record them.
EXPECTED: dict[str, tuple[Check, Check]] = {
    "fingerprint": (["fp_6ec83003ad"], "fp_new0000001"),
    "model": ("gpt-4o-2024-08-06", "gpt-4o-2025-05-13"),
    "quota-limit": (10000, 5000),
    "availability": ({}, {"http_server_error": 3}),  # failures by error kind: none, then 3
    "output": ([14], 39),  # the prompt grew by the 25 hidden system-prompt tokens
    "latency": (near(20), near(60)),
}

SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], str, str]] = {
    # name: (target keys, change, revert, kind, key)
    "fingerprint": ({}, {"fingerprints": [{"value": "fp_new0000001"}]},
                    {"fingerprints": [{"value": "fp_6ec83003ad"}]}, "fingerprint",
                    "new:fp_new0000001"),
    "model": ({}, {"aliases": {"gpt-4o": "gpt-4o-2025-05-13"}},
              {"aliases": {"gpt-4o": "gpt-4o-2024-08-06"}}, "model", "gpt-4o"),
    "quota-limit": ({}, {"rate_limits": {"requests_per_window": 5000}},
                    {"rate_limits": {"requests_per_window": 10000}}, "quota", "limit_requests"),
    "availability": ({}, {"faults": {"rate": 1.0, "kinds": ["http_503"]}},
                     {"faults": {"rate": 0.0}}, "availability", "consecutive_failures"),
    "output": ({}, {"hidden_system_prompt_tokens": 25}, {"hidden_system_prompt_tokens": 0},
               "output", "prompt_tokens"),
    "latency": ({}, {"latency": {"base_ms": 60, "jitter_ms": 6}},
                {"latency": {"base_ms": 20, "jitter_ms": 2}}, "latency", "processing_ms"),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_drift_kind_raises_exactly_one_alert_and_resolves_after_revert(
    name: str, sim: SimClient, run: Callable[..., Run]
) -> None:
    target, change, revert, kind, key = SCENARIOS[name]
    sim.update(latency={"base_ms": 20, "jitter_ms": 2})
    canary = run(**target)
    canary.probes(30)
    assert canary.alerts() == []  # warm-up and a steady baseline raise nothing
    sim.update(**change)
    canary.probes(12)
    alert = only_alert(canary)
    assert (alert.kind, alert.key, alert.state) == (kind, key, AlertState.OPEN)
    for check, found in zip(EXPECTED[name], (alert.before, alert.after), strict=True):
        assert check(found) if callable(check) else found == check, (alert.before, alert.after)
    sim.update(**revert)
    canary.probes(25)
    alert = only_alert(canary)
    assert alert.state == AlertState.RESOLVED and alert.resolution
    with canary.daemon.recorder.engine.connect() as connection:
        changes = connection.execute(
            select(OutboxRow.change).where(OutboxRow.alert_id == alert.id).order_by(OutboxRow.id)
        ).scalars().all()
    assert changes == ["opened", "resolved"]


def test_before_and_after_values_name_what_changed(sim: SimClient, run: Callable[..., Run]) -> None:
    canary = run()
    canary.probes(10)
    sim.update(aliases={"gpt-4o": "gpt-4o-2025-05-13"})
    canary.probes(1)  # found at the first probe that shows it
    alert = only_alert(canary)
    assert (alert.before, alert.after) == ("gpt-4o-2024-08-06", "gpt-4o-2025-05-13")
    assert "gpt-4o-2025-05-13" in alert.explanation


def test_a_steady_run_with_alternating_fingerprints_and_one_error_raises_nothing(
    sim: SimClient, run: Callable[..., Run]
) -> None:
    sim.update(latency={"base_ms": 20, "jitter_ms": 8},
               fingerprints=[{"value": "fp_aaaaaaaaaa", "weight": 3},
                             {"value": "fp_bbbbbbbbbb", "weight": 1}])
    # The default pool warm-up (30 probes): a 1-in-4 backend is in it.
    canary = run(detect={**FAST, "fingerprint_warmup_probes": 30})
    canary.probes(60)
    sim.enqueue({"fault": "http_502"})
    canary.probes(60)
    assert canary.alerts() == []


def test_availability_opens_at_exactly_the_nth_failure(
    sim: SimClient, run: Callable[..., Run]
) -> None:
    canary = run()
    canary.probes(10)
    sim.update(faults={"rate": 1.0, "kinds": ["http_503"]})
    canary.probes(2)
    assert canary.alerts() == []
    canary.probes(1)
    alert = only_alert(canary)
    assert alert.state == AlertState.OPEN and alert.severity == "critical"


def test_a_flap_within_the_cooldown_continues_the_alert_silently(
    sim: SimClient, run: Callable[..., Run]
) -> None:
    canary = run(alerts={"cooldown": "1h"})
    canary.probes(10)
    for _ in range(2):
        sim.update(faults={"rate": 1.0, "kinds": ["http_503"]})
        canary.probes(3)
        sim.update(faults={"rate": 0.0})
        canary.probes(4)  # clear for resolve_after (3) probes: resolved...
    alert = only_alert(canary)  # ...but it came back within the hour: the same alert
    assert alert.flaps == 1
    canary.daemon.dispatch()
    with canary.daemon.recorder.engine.connect() as connection:
        outbox = connection.execute(select(OutboxRow.change, OutboxRow.state)
                                    .order_by(OutboxRow.id)).all()
    # One 'opened' sent; the first 'resolved' dropped by the flap; the last still waits out
    # the cooldown before anyone hears the alert resolved.
    assert [tuple(row) for row in outbox] == [
        ("opened", "grouped"), ("resolved", "dropped"), ("resolved", "pending")]


def test_open_after_and_resolve_after_are_honoured(sim: SimClient, run: Callable[..., Run]) -> None:
    canary = run(alerts={"open_after": 2, "resolve_after": 1})
    canary.probes(10)
    sim.update(faults={"rate": 1.0, "kinds": ["http_503"]})
    canary.probes(3)  # the condition opens at the 3rd failure: pending, not an alert yet
    assert [a.state for a in canary.alerts()] == [AlertState.PENDING]
    canary.probes(1)
    assert only_alert(canary).state == AlertState.OPEN
    sim.update(faults={"rate": 0.0})
    canary.probes(1)
    assert only_alert(canary).state == AlertState.RESOLVED


def test_maintenance_holds_notifications_and_releases_what_outlasts_it(
    sim: SimClient, run: Callable[..., Run], make_settings: MakeSettings
) -> None:
    now = T0 + timedelta(minutes=13)  # when the 13 probes below are done and dispatched
    window = {"start": (T0 - timedelta(minutes=1)).isoformat(),
              "end": (now + timedelta(minutes=1)).isoformat()}
    canary = run(alerts={"maintenance": [window]})
    canary.probes(10)
    sim.update(faults={"rate": 1.0, "kinds": ["http_503"]})
    canary.probes(3)
    canary.daemon.dispatch()
    engine = canary.daemon.recorder.engine
    with engine.connect() as connection:
        assert connection.execute(select(OutboxRow.state)).scalars().all() == ["held"]
        assert connection.execute(select(NotificationRow.id)).all() == []
    # The window ends with the alert still open: people hear of it then.
    canary.daemon.dispatcher.run(now + timedelta(minutes=2))
    with engine.connect() as connection:
        assert connection.execute(select(OutboxRow.state)).scalars().all() == ["grouped"]


def test_ten_targets_failing_together_send_one_notification(
    sim: SimClient, tmp_path: Path, engine: Engine, make_settings: MakeSettings
) -> None:
    names = [f"t{i}" for i in range(10)]
    settings = make_settings(*({"name": n, "interval": "1m", "detect": FAST} for n in names),
                             alerts={"group_wait": "30s"})
    daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"))
    daemon.register()
    try:
        for minute in range(10):
            daemon.tick(T0 + timedelta(minutes=minute))
        sim.update(faults={"rate": 1.0, "kinds": ["http_503"]})
        for minute in range(10, 13):
            daemon.tick(T0 + timedelta(minutes=minute))
        last = T0 + timedelta(minutes=12)
        daemon.dispatcher.run(last)  # within group_wait: nothing yet
        with engine.connect() as connection:
            assert connection.execute(select(NotificationRow.id)).all() == []
        daemon.dispatcher.run(last + timedelta(seconds=31))
        with engine.connect() as connection:
            titles = connection.execute(select(NotificationRow.title)).scalars().all()
            bodies = connection.execute(
                select(DeliveryRow.body).where(DeliveryRow.channel == "log")).scalars().all()
        assert titles == ["10 targets: availability opened (critical)"]
        assert all(f"target=\"{name}\"" in bodies[0]["line"] for name in names)
    finally:
        daemon.close()


def test_a_webhook_down_for_a_while_gets_each_notification_exactly_once(
    sim: SimClient, run: Callable[..., Run]
) -> None:
    with Receiver() as receiver:
        receiver.down()
        canary = run(alerts={"webhooks": [f"{receiver.url}/generic"],
                             "slack_webhooks": [f"{receiver.url}/slack"], "cooldown": "0s"})
        canary.probes(10)
        sim.update(faults={"rate": 1.0, "kinds": ["http_503"]})
        canary.probes(3)
        sim.update(faults={"rate": 0.0})
        canary.probes(3)
        dispatcher = canary.daemon.dispatcher
        now = canary.now()
        for second in range(0, 3600, 30):  # an hour of retries while it is down
            dispatcher.run(now + timedelta(seconds=second))
        assert receiver.received == []
        receiver.up()
        for second in range(3600, 4200, 30):  # back: every notification arrives, once, in order
            dispatcher.run(now + timedelta(seconds=second))
        generic = [(h, b) for h, b, path in receiver.received if path == "/generic"]
        slack = [b for _, b, path in receiver.received if path == "/slack"]
        assert [body["change"] for _, body in generic] == ["opened", "resolved"]
        assert len({headers["idempotency-key"] for headers, _ in generic}) == 2
        assert [("opened" in b["text"], "resolved" in b["text"]) for b in slack] == [
            (True, False), (False, True)]
        assert all(body["blocks"] for body in slack)
        # A fresh dispatcher (a restart) finds nothing left to send.
        restarted = type(dispatcher)(dispatcher.engine, dispatcher.policy)
        restarted.run(now + timedelta(seconds=4300))
        restarted.close()
        assert len(receiver.received) == 4


def test_a_failing_notifier_never_stops_probing(sim: SimClient, run: Callable[..., Run]) -> None:
    canary = run(alerts={"webhooks": ["http://127.0.0.1:9/unreachable"]})
    canary.probes(10)
    sim.update(faults={"rate": 1.0, "kinds": ["http_503"]})
    canary.probes(3)
    canary.daemon.dispatch()
    canary.probes(3)  # still probing
    with canary.daemon.recorder.engine.connect() as connection:
        webhook = connection.execute(select(DeliveryRow).where(
            DeliveryRow.channel != "log")).one()
    assert webhook.delivered_at is None and webhook.attempts == 1
    assert webhook.destination == "http://127.0.0.1:9/…"
    assert "unreachable" not in (webhook.last_error or "")


def test_drift_events_are_stored_once_per_probe(sim: SimClient, run: Callable[..., Run]) -> None:
    canary = run()
    canary.probes(10)
    sim.update(fingerprints=[{"value": "fp_new0000001"}])
    canary.probes(2)
    with canary.daemon.recorder.engine.connect() as connection:
        events = connection.execute(select(DriftEventRow.kind, DriftEventRow.key,
                                           DriftEventRow.opened)).all()
    assert [tuple(e) for e in events] == [("fingerprint", "new:fp_new0000001", True)]


# --- the lifecycle on its own ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "streak", "holds", "expected"),
    [
        ("pending", 0, True, lifecycle.Step("open", 0, "opened")),
        ("pending", 0, False, lifecycle.Step(None, 0, None)),
        ("open", 0, True, lifecycle.Step("open", 0, None)),
        ("open", 0, False, lifecycle.Step("open", 1, None)),
        ("open", 2, False, lifecycle.Step("resolved", 0, "resolved")),
        ("open", 2, True, lifecycle.Step("open", 0, None)),
    ],
)
def test_lifecycle_steps(state: str, streak: int, holds: bool, expected: lifecycle.Step) -> None:
    assert lifecycle.advance(state, streak, holds, AlertSettings()) == expected


def test_open_after_counts_probes_in_a_row() -> None:
    policy = AlertSettings(open_after=3)
    step = lifecycle.advance("pending", 0, True, policy)
    assert step == lifecycle.Step("pending", 1, None)
    step = lifecycle.advance("pending", 2, True, policy)
    assert step == lifecycle.Step("open", 0, "opened")


def test_reminders_are_due_after_remind_every() -> None:
    policy = AlertSettings(remind_every_ms=3_600_000)
    assert not lifecycle.reminder_due(T0, T0 + timedelta(minutes=59), policy)
    assert lifecycle.reminder_due(T0, T0 + timedelta(hours=1), policy)
    assert not lifecycle.reminder_due(T0, T0 + timedelta(days=9), AlertSettings())


# --- the CLI over stored alerts and history ---------------------------------------------------


def test_live_detection_and_monitor_detect_give_the_same_events(
    sim: SimClient, run: Callable[..., Run], tmp_path: Path
) -> None:
    canary = run()
    canary.probes(10)
    sim.update(fingerprints=[{"value": "fp_new0000001"}], faults={"rate": 1.0,
                                                                   "kinds": ["http_503"]})
    canary.probes(4)
    sim.update(faults={"rate": 0.0}, aliases={"gpt-4o": "gpt-4o-2025-05-13"})
    canary.probes(6)
    sim.update(fingerprints=[{"value": "fp_6ec83003ad"}], aliases={"gpt-4o": "gpt-4o-2024-08-06"})
    canary.probes(8)
    with canary.daemon.recorder.engine.connect() as connection:
        live = [
            (row.kind, row.key, row.opened, row.probe_uid, row.before, row.after)
            for row in connection.execute(select(DriftEventRow).order_by(DriftEventRow.id))
        ]
    assert {kind for kind, *_ in live} == {"fingerprint", "availability", "model"}
    result = CliRunner().invoke(cli, ["detect", "--json", "--config",
                                      str(tmp_path / "monitor.toml")])
    assert result.exit_code == 0, result.output
    rerun = [(e["kind"], e["key"], e["opened"], e["probe_uids"][-1], e["before"], e["after"])
             for e in json.loads(result.output)]
    assert sorted(rerun, key=repr) == sorted(live, key=repr)


def test_detect_with_other_thresholds_and_notify(
    sim: SimClient, run: Callable[..., Run], tmp_path: Path
) -> None:
    canary = run()
    canary.probes(10)
    sim.update(faults={"rate": 1.0, "kinds": ["http_503"]})
    canary.probes(4)
    config = (tmp_path / "monitor.toml").read_text()
    with Receiver() as receiver:
        hooked = config.replace('group_wait = "0s"',
                                f'group_wait = "0s"\nwebhooks = ["{receiver.url}"]')
        stricter = tmp_path / "stricter.toml"
        stricter.write_text(hooked.replace(
            "{warmup_probes = 5,", "{warmup_probes = 5, availability_consecutive_failures = 5,"))
        quiet = CliRunner().invoke(cli, ["detect", "--notify", "--config", str(stricter)],
                                   obj=canary.now)
        assert quiet.exit_code == 0, quiet.output
        assert quiet.output.strip() == "no drift events" and receiver.received == []
        notifying = tmp_path / "notifying.toml"
        notifying.write_text(hooked)
        loud = CliRunner().invoke(cli, ["detect", "--since", "1h", "--notify", "--config",
                                        str(notifying)], obj=canary.now)
        assert loud.exit_code == 0, loud.output
        assert "availability consecutive_failures opened (critical)" in loud.output
        [(_, body, _)] = receiver.received
        assert body["change"] == "opened" and body["alerts"][0]["kind"] == "availability"
    bad = CliRunner().invoke(cli, ["detect", "--since", "soon", "--config", str(stricter)],
                             obj=canary.now)
    assert bad.exit_code == 2 and "--since" in bad.output


def test_alerts_ack_and_fingerprints_commands(
    sim: SimClient, run: Callable[..., Run], tmp_path: Path
) -> None:
    canary = run()
    canary.probes(10)
    sim.update(fingerprints=[{"value": "fp_new\u001b[31m"}])  # a hostile value
    canary.probes(3)
    config = ["--config", str(tmp_path / "monitor.toml")]

    def monitor(*args: str) -> Any:  # the CLI on the canary's clock
        return CliRunner().invoke(cli, [*args, *config], obj=canary.now)

    listed = monitor("alerts", "--open")
    assert listed.exit_code == 0, listed.output
    assert "OPEN" in listed.output and "fingerprint" in listed.output
    assert "\u001b" not in listed.output  # escaped, never sent to the terminal raw
    [alert] = json.loads(monitor("alerts", "--json").output)
    # The probes that show the change, by id, for `monitor show` and /probes/{id}.
    assert len(alert["probe_ids"]) == len(alert["probe_uids"]) == 1
    assert f"probes #{alert['probe_ids'][0]} (" in listed.output
    shown = monitor("show", str(alert["probe_ids"][0]))
    assert "fp_6ec83003ad -> fp_new\\x1b[31m" in shown.output
    acked = monitor("ack", str(alert["id"]), "--by", "ana")
    assert acked.exit_code == 0 and "acked by ana" in acked.output
    assert monitor("ack", "999").exit_code == 1
    assert json.loads(monitor("alerts", "--json", "--target", "other").output) == []
    found = json.loads(monitor("fingerprints", "--json").output)
    [entry] = found
    shares = {f["fingerprint"]: (f["count"], f["share"]) for f in entry["fingerprints"]}
    assert shares == {"fp_6ec83003ad": (10, round(10 / 13, 4)),
                      "fp_new\u001b[31m": (3, round(3 / 13, 4))}
    assert [c["change"] for c in entry["timeline"]] == ["opened"]
    text = monitor("fingerprints", "--since", "1d").output
    assert "fp_6ec83003ad" in text and "\u001b" not in text


def stored_ok(database_url: str) -> int:
    engine = db.open_store(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(
                select(func.count(ProbeRow.id)).where(ProbeRow.ok.is_(True))).scalar_one())
    finally:
        engine.dispose()


def test_monitor_run_notifies_a_webhook_when_an_alert_opens_and_resolves(
    sim: SimClient, sim_server: Any, tmp_path: Path, database_url: str
) -> None:
    with Receiver() as receiver:
        config = write_config(
            tmp_path / "monitor.toml",
            [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
              "model": "gpt-4o", "interval": "1s", "timeout": "1s",
              "detect": {"warmup_probes": 3}}],
            database_url,
            alerts={"webhooks": [receiver.url], "group_wait": "0s", "cooldown": "0s",
                    "resolve_after": 1},
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config),
             "--spool", str(tmp_path / "spool.jsonl")],
            stderr=subprocess.DEVNULL, cwd=tmp_path)
        try:
            # Past the warm-up: three good probes stored before the failures begin.
            wait_until(lambda: stored_ok(database_url) >= 3, "3 good probes stored")
            sim.update(faults={"rate": 1.0, "kinds": ["http_503"]})
            receiver.wait_for(1)
            sim.update(faults={"rate": 0.0})
            receiver.wait_for(2)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
    opened, resolved = (body for _, body, _ in receiver.received[:2])
    assert (opened["change"], resolved["change"]) == ("opened", "resolved")
    assert opened["alerts"][0]["kind"] == "availability"
    assert opened["alerts"][0]["target"] == "a"
