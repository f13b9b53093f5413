"""Every silence explained: what the monitor waits for per target (baselines still learning,
a backoff after a 429, a spent budget, maintenance), read from the store by any process, in
`monitor status`, `monitor report` and /api/report, against the simulator on each database.
The pure rules are tested on their own first."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import Engine, select

from monitor import defaults, probe
from monitor.alerting import MaintenanceWindow, OneOff, Recurring
from monitor.alerts.maintenance import maintenance_until
from monitor.cli import cli
from monitor.daemon import Daemon
from monitor.detect import Warmup
from monitor.domain import RateLimits
from monitor.sim import SimClient
from monitor.store.models import ProbeRow, SlotRow
from monitor.store.records import Recorder
from monitor.store.spool import Spool
from monitor.watching import WatchState, backoff_s
from monitor.web import serving
from tests.conftest import MakeSettings
from tests.report_fixtures import running

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


# --- the pure rules -------------------------------------------------------------------------


def state(**changes: Any) -> WatchState:
    fields: dict[str, Any] = {"probed": True, "warmups": (), "backoff_until": None,
                              "budget_spent": None, "maintenance_until": None}
    return WatchState(**(fields | changes))


def test_nothing_pending_reads_watching() -> None:
    assert state().to_json(T0) == {"summary": "watching", "warmups": [], "backoff_until": None,
                                   "budget_spent": None, "maintenance_until": None}


def test_the_summary_names_the_warmup_furthest_from_done() -> None:
    warmups = (Warmup("availability", "error rate window", 12, 20),
               Warmup("fingerprint", "fingerprint pool", 12, 30),
               Warmup("latency", "latency baseline", 12, 20))
    assert state(warmups=warmups).summary(T0) == (
        "learning fingerprint pool (12 of 30 probes) and 2 more baselines")
    assert state(warmups=warmups[2:]).summary(T0) == "learning latency baseline (12 of 20 probes)"


def test_every_reason_is_said_in_one_line_in_whole_utc_seconds() -> None:
    until = T0 + timedelta(seconds=9, microseconds=400_000)
    found = state(backoff_until=until, budget_spent="daily token budget spent (20 of 20 "
                  "tokens today, UTC)", maintenance_until=T0 + timedelta(days=1, hours=2),
                  warmups=(Warmup("model", "model", 3, 10),))
    assert found.summary(T0) == (
        "backing off after HTTP 429 until 12:00:09 UTC; daily token budget spent (20 of 20 "
        "tokens today, UTC); in maintenance until 2026-11-27 14:00:00 UTC; learning model "
        "(3 of 10 probes)")
    assert found.to_json(T0)["backoff_until"] == until.isoformat()


def test_a_target_never_probed_or_not_folded_says_so() -> None:
    assert state(probed=False).summary(T0) == "waiting for its first probe"
    assert state(warmups=None).summary(T0).startswith("detectors have not folded")


@pytest.mark.parametrize(("retry_after_s", "limits", "expected"), [
    pytest.param(7.0, RateLimits(reset_requests_s=30.0), 7.0, id="retry-after-first"),
    pytest.param(None, RateLimits(reset_requests_s=0.0, reset_tokens_s=12.5), 12.5,
                 id="then-the-reset-headers"),
    pytest.param(None, RateLimits(), 60.0, id="else-one-interval"),
])
def test_the_backoff_is_what_the_server_said_else_one_interval(
        retry_after_s: float | None, limits: RateLimits, expected: float) -> None:
    assert backoff_s(retry_after_s, limits, 60_000) == expected


def test_maintenance_lasts_to_the_end_of_windows_that_follow_each_other() -> None:
    first = MaintenanceWindow("a", OneOff(T0, T0 + 2 * MINUTE))
    second = MaintenanceWindow("b", OneOff(T0 + 2 * MINUTE, T0 + 5 * MINUTE))
    other = MaintenanceWindow("c", OneOff(T0, T0 + 60 * MINUTE), targets=("other",))
    windows = [first, second, other]
    assert maintenance_until(windows, "a", T0 + MINUTE) == T0 + 5 * MINUTE
    assert maintenance_until(windows, "a", T0 + 5 * MINUTE) is None
    nightly = MaintenanceWindow("n", Recurring(tuple(range(7)), time(23, 0), time(1, 0),
                                               ZoneInfo("Europe/Berlin")))
    # 23:30 in Berlin (UTC+1 in November) ends at 01:00 local, midnight UTC.
    assert maintenance_until([nightly], "a", datetime(2026, 11, 26, 22, 30, tzinfo=UTC)) == (
        datetime(2026, 11, 27, 0, 0, tzinfo=UTC))


# --- end to end: the daemon, the store, and the commands that read it -------------------


class Canary:
    """Targets probed on a fake clock by a real daemon, against the simulator, over a real
    database; the commands read the same clock (`obj=canary.now`)."""

    def __init__(self, daemon: Daemon, config: Path) -> None:
        self.daemon = daemon
        self.config = config
        self.at = T0

    def now(self) -> datetime:
        return self.at

    def tick(self, count: int = 1, *, detect: bool = True) -> None:
        """`count` rounds a minute apart; without `detect`, stored as `monitor probe` stores
        them (no detector folds them)."""
        for _ in range(count):
            if detect:
                assert self.daemon.tick(self.at) >= 1
            else:
                for target in self.daemon.settings.targets:
                    result = probe.run(target, self.daemon.prober.session(target), now=self.at)
                    assert self.daemon.store(result) is not None
            self.at += MINUTE

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(cli, [*args, "--config", str(self.config)], obj=self.now)
        assert result.exit_code == 0, result.output
        return result.output

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.cli("status", "--json"))
        return found


@pytest.fixture
def canary(tmp_path: Path, engine: Engine, database_url: str, make_settings: MakeSettings,
           sim: SimClient) -> Iterator[Callable[..., Canary]]:
    made: list[Daemon] = []

    def make(*targets: dict[str, Any], alerts: dict[str, Any] | None = None) -> Canary:
        settings = make_settings(*({"interval": "1m", "timeout": "5s", **t} for t in targets),
                                 alerts=alerts, database_url=database_url)
        daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"),
                        clock=lambda: made_canary.now())
        daemon.register()
        made.append(daemon)
        made_canary = Canary(daemon, tmp_path / "monitor.toml")
        return made_canary

    yield make
    for daemon in made:
        daemon.close()


def api_report(canary: Canary) -> dict[str, Any]:
    engine = canary.daemon.recorder.engine
    app = serving.build_app(engine, None, lambda: canary.daemon.settings, clock=canary.now)
    with running(app) as url:
        answer = requests.get(f"{url}/api/report?since=1h", timeout=10)
    assert answer.status_code == 200
    found: dict[str, Any] = answer.json()
    return found


LEARNING_13 = {
    "summary": "learning fingerprint pool (13 of 30 probes) and 2 more baselines",
    "warmups": [
        {"baseline": "error rate window", "detector": "availability", "seen": 13, "needed": 20},
        {"baseline": "fingerprint pool", "detector": "fingerprint", "seen": 13, "needed": 30},
        {"baseline": "latency baseline", "detector": "latency", "seen": 13, "needed": 20},
    ],
    "backoff_until": None, "budget_spent": None, "maintenance_until": None,
}


@pytest.mark.parametrize("folded", [
    pytest.param(12, id="daemon-folded-and-one-stored-since"),
    pytest.param(0, id="never-folded"),
])
def test_status_and_the_reports_say_which_baseline_is_learning_and_how_far(
        canary: Callable[..., Canary], folded: int) -> None:
    run = canary({"name": "a"})
    run.tick(folded)
    run.tick(13 - folded, detect=False)  # stored without detection, as `monitor probe` does
    assert run.status()["states"] == {"a": LEARNING_13}
    report = json.loads(run.cli("report", "--format", "json", "--since", "1h"))
    assert [t["state"] for t in report["targets"]] == [LEARNING_13]
    assert [t["state"] for t in api_report(run)["targets"]] == [LEARNING_13]
    text = run.cli("status")
    assert "a  learning fingerprint pool (13 of 30 probes) and 2 more baselines" in text
    assert "fingerprint pool: 13 of 30 probes" in text
    assert "open alerts     none" in text


def test_a_target_not_probed_yet_waits_for_its_first_probe(
        canary: Callable[..., Canary]) -> None:
    run = canary({"name": "a"}, {"name": "b"})
    run.daemon.probe_target(run.daemon.settings.targets[0], run.at)
    states = run.status()["states"]
    assert states["b"]["summary"] == "waiting for its first probe"
    assert {w["baseline"]: w["seen"] for w in states["b"]["warmups"]} == {
        "availability": 0, "error rate window": 0, "quota": 0, "latency baseline": 0}
    assert states["a"]["summary"].startswith("learning fingerprint pool (1 of 30 probes)")


def test_after_a_429_any_process_knows_until_when_the_daemon_backs_off(
        canary: Callable[..., Canary], engine: Engine) -> None:
    run = canary({"name": "limited", "model": "sim-429"})
    run.daemon.tick(run.at)
    until, _ = run.daemon._backoff["limited"]  # what the daemon holds in memory
    with engine.connect() as connection:
        started, retry_after_s = connection.execute(
            select(ProbeRow.started_at, ProbeRow.retry_after_s)).one()
    assert until == started + timedelta(seconds=retry_after_s)
    run.at += timedelta(milliseconds=500)
    found = run.status()["states"]["limited"]
    assert found["backoff_until"] == until.isoformat()
    assert found["summary"].startswith(
        f"backing off after HTTP 429 until {until:%H:%M:%S} UTC; learning ")
    run.at = until
    assert run.status()["states"]["limited"]["backoff_until"] is None


def test_a_spent_budget_is_reported_as_the_daemon_skips_for_it(
        canary: Callable[..., Canary], engine: Engine) -> None:
    run = canary({"name": "thrifty", "daily_request_budget": 2})
    run.tick(2)
    assert run.daemon.tick(run.at) == 0  # spent: the daemon skips the slot
    with engine.connect() as connection:
        reason = connection.execute(
            select(SlotRow.reason).where(SlotRow.state == "skipped")).scalar_one()
    found = run.status()["states"]["thrifty"]
    assert found["budget_spent"] == reason == (
        "daily request budget spent (2 of 2 requests today, UTC)")
    assert found["summary"].startswith(reason)
    run.at = T0 + timedelta(days=1)  # a new UTC day: whole again
    assert run.status()["states"]["thrifty"]["budget_spent"] is None


def test_a_maintenance_window_is_reported_until_it_ends(canary: Callable[..., Canary]) -> None:
    window = {"name": "upgrade", "start": "2026-11-26T11:00:00Z", "end": "2026-11-26T13:30:00Z",
              "targets": ["a"]}
    run = canary({"name": "a"}, {"name": "b"}, alerts={"maintenance": [window]})
    run.tick(1)
    states = run.status()["states"]
    assert states["a"]["maintenance_until"] == "2026-11-26T13:30:00+00:00"
    assert states["a"]["summary"].startswith("in maintenance until 13:30:00 UTC; learning ")
    assert states["b"]["maintenance_until"] is None


FAST = {"warmup_probes": 5, "fingerprint_warmup_probes": 5, "latency_baseline_probes": 20,
        "latency_min_samples": 8}


def test_a_warmed_up_target_is_watching_and_status_lists_its_open_alerts(
        canary: Callable[..., Canary], sim: SimClient) -> None:
    run = canary({"name": "a", "detect": FAST})
    run.tick(19)
    assert run.status()["states"]["a"]["summary"] == (
        "learning error rate window (19 of 20 probes) and 1 more baseline")
    run.tick(1)
    assert run.status()["states"]["a"]["summary"] == "watching"
    sim.update(fingerprints=[{"value": "fp_new0000001"}])
    run.tick(1)
    status = run.status()
    assert status["states"]["a"]["summary"] == "watching"  # an alert is no silence
    assert [(a["target"], a["kind"], a["key"], a["severity"]) for a in status["open_alerts"]] == [
        ("a", "fingerprint", "new:fp_new0000001", "warning")]
    text = run.cli("status")
    assert "open alerts     1" in text
    assert "warning  a  fingerprint new:fp_new0000001  opened " in text
    assert status["open_alerts"][0]["explanation"] in text
    # Times for people: to the second, in UTC, and how long ago by the CLI's clock.
    assert re.search(r"opened \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \((just now|\d+ \w+ ago)\)",
                     text), text
    last_probe = text.split("last probe per target\n")[1].split("\n")[0]
    assert re.fullmatch(r"  a  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ min ago\)  ok  \d+ ms",
                        last_probe), last_probe


def test_a_state_made_under_other_thresholds_is_folded_again_as_the_daemon_would(
        canary: Callable[..., Canary], make_settings: MakeSettings, database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    run = canary({"name": "a"})
    run.tick(12)  # folded and saved under the default thresholds
    make_settings({"name": "a", "interval": "1m", "detect": {"fingerprint_warmup_probes": 40}},
                  database_url=database_url)  # the same monitor.toml, new thresholds
    pool = {w["baseline"]: (w["seen"], w["needed"])
            for w in run.status()["states"]["a"]["warmups"]}
    assert pool["fingerprint pool"] == (12, 40)
    # Too long a history to fold while answering: said, not guessed.
    monkeypatch.setattr(defaults, "WATCH_FOLD_MAX_PROBES", 11)
    found = run.status()["states"]["a"]
    assert found["warmups"] == []
    assert found["summary"] == ("detectors have not folded its stored probes yet (the daemon "
                                "does at its next probe)")
