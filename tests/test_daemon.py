"""The daemon: the step function with a fixed clock, quota backoff, the spool through a real
database outage, and `monitor run` as a real subprocess."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from monitor.cli import cli
from monitor.daemon import Daemon
from monitor.domain import ErrorKind
from monitor.sim import SimClient, Simulator
from monitor.store import db
from monitor.store.models import ProbeRow, SlotRow, TargetConfigRow
from monitor.store.records import Recorder
from monitor.store.spool import Spool
from tests.conftest import MakeSettings, empty_postgres, write_config
from tests.proxy import Proxy

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def count(engine: Engine, *where: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count(ProbeRow.id)).where(*where)).scalar_one())


@pytest.fixture
def make_daemon(tmp_path: Path, make_settings: MakeSettings) -> Iterator[Any]:
    made: list[Daemon] = []

    def make(engine: Engine, *targets: dict[str, Any]) -> Daemon:
        settings = make_settings(*targets)
        daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"))
        daemon.prober.register(settings.targets)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()


def test_tick_probes_each_target_once_per_interval(
    sim: SimClient, engine: Engine, make_daemon: Any
) -> None:
    daemon = make_daemon(engine, {"name": "a", "interval": "1m"}, {"name": "b", "interval": "2m"})
    assert daemon.tick(T0) == 2
    assert daemon.tick(T0 + timedelta(seconds=30)) == 0
    assert daemon.tick(T0 + timedelta(seconds=60)) == 1  # a only
    assert daemon.tick(T0 + timedelta(seconds=120)) == 2
    assert count(engine) == 5


def test_after_a_429_the_target_waits_for_retry_after(
    sim: SimClient, engine: Engine, make_daemon: Any
) -> None:
    daemon = make_daemon(engine, {"name": "limited", "model": "sim-429", "interval": "1s",
                                  "timeout": "1s"})
    assert daemon.tick(T0) == 1
    assert count(engine, ProbeRow.error_kind == ErrorKind.RATE_LIMITED.value) == 1
    # The simulator's retry-after is at least a second; every slot inside it is skipped.
    assert daemon.tick(T0 + timedelta(milliseconds=999)) == 0
    assert daemon.tick(T0 + timedelta(seconds=120)) == 1


def test_a_database_outage_spools_and_drains_without_loss_or_duplicates(
    sim: SimClient, make_daemon: Any, postgres_through_proxy: tuple[str, Proxy]
) -> None:
    url, proxy = postgres_through_proxy
    engine = db.open_store(url)
    daemon = make_daemon(engine, {"name": "a", "interval": "1m"}, {"name": "b", "interval": "1m"})
    assert daemon.tick(T0) == 2
    proxy.cut()
    for minute in range(1, 4):
        assert daemon.tick(T0 + timedelta(minutes=minute)) == 2
    assert daemon.spool.backlog() == 6
    proxy.restore()
    assert daemon.drain() == 6
    assert daemon.spool.backlog() == 0
    assert count(engine) == 8
    daemon.tick(T0 + timedelta(minutes=4))  # and new results go straight to the database again
    assert count(engine) == 10
    engine.dispose()


def test_run_starts_while_the_database_is_down_and_stores_everything_once_it_is_back(
    tmp_path: Path, sim_server: Simulator, sim: SimClient,
    postgres_through_proxy: tuple[str, Proxy],
) -> None:
    url, proxy = postgres_through_proxy
    db.upgrade(url)
    proxy.cut()
    config = write_config(
        tmp_path / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1s", "timeout": "1s"}],
        url,
    )
    process = start(config)
    seen: list[str] = []
    wait_for_line(process, "probing anyway and spooling", seen)
    wait_for_line(process, " ok ", seen)
    time.sleep(2)
    proxy.restore()
    wait_for_line(process, "wrote", seen)  # "database is back: wrote N spooled probes"
    assert stop(process) == 0
    sent = sim.stats()["by_path"]["/v1/chat/completions"]
    engine = db.open_store(url)
    with engine.connect() as connection:
        assert count(engine) == sent
        assert connection.execute(select(func.count(func.distinct(ProbeRow.uid)))).scalar() == sent
        # The target's configuration was registered when the database came back, not lost.
        configs = connection.execute(select(TargetConfigRow.config)).scalars().all()
    engine.dispose()
    assert [c["model"] for c in configs] == ["gpt-4o"]


def test_slots_skipped_while_the_database_is_down_are_recorded_when_it_is_back(
    sim: SimClient, make_daemon: Any, postgres_through_proxy: tuple[str, Proxy]
) -> None:
    url, proxy = postgres_through_proxy
    engine = db.open_store(url)
    daemon = make_daemon(engine, {"name": "a", "interval": "1m"})
    daemon.tick(T0)
    proxy.cut()
    sim.enqueue({"fault": "rate_limited"})  # retry-after: the window's end, minutes away
    daemon.tick(T0 + timedelta(minutes=1))
    proxy.restore()
    daemon.drain()
    with engine.connect() as connection:
        skipped = connection.execute(
            select(SlotRow.reason).where(SlotRow.state == "skipped")).scalars().all()
    engine.dispose()
    assert skipped and all(reason.startswith("rate limited: HTTP 429") for reason in skipped)


@pytest.fixture
def run_config(tmp_path: Path, sim_server: Simulator, database_url: str) -> Path:
    return write_config(
        tmp_path / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1s", "timeout": "1s"}],
        database_url,
    )


def start(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(config),
         "--spool", str(config.parent / "spool.jsonl"), *args],
        stderr=subprocess.PIPE, text=True, cwd=config.parent,
    )


def wait_for_line(process: subprocess.Popen[str], needle: str, seen: list[str]) -> str:
    assert process.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        seen.append(line)
        if needle in line:
            return line
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"no line with {needle!r} in:\n{''.join(seen)}")


def stop(process: subprocess.Popen[str], *, signal_it: bool = True) -> int:
    if signal_it and process.poll() is None:
        process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=20)
    if process.stderr is not None:
        process.stderr.close()
    return code


def stored(database_url: str) -> int:
    engine = db.open_store(database_url)
    try:
        return count(engine)
    finally:
        engine.dispose()


def test_run_once_probes_and_exits(sim: SimClient, run_config: Path, database_url: str) -> None:
    process = start(run_config, "--once", "--log-format", "json")
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None
    lines = [json.loads(line) for line in process.stderr.read().splitlines()]
    process.stderr.close()
    assert any(line["message"].startswith("a ") and " ok " in line["message"] for line in lines)
    assert stored(database_url) == 1


def test_sigterm_lets_the_probe_in_flight_finish(
    sim: SimClient, run_config: Path, database_url: str
) -> None:
    sim.update(latency={"base_ms": 800, "jitter_ms": 0})
    process = start(run_config)
    seen: list[str] = []
    try:
        wait_for_line(process, "a  ok", seen)  # slot s ended at s+0.8 s
        time.sleep(0.5)  # slot s+1 (± 0.1 s jitter) runs until about s+1.8 s: in flight now
        process.send_signal(signal.SIGTERM)
        wait_for_line(process, "finishing in-flight probes", seen)
        finished = wait_for_line(process, "a  ok", seen)  # after the signal, not cut off
        assert "200" in finished
        wait_for_line(process, "stopped", seen)
    finally:
        assert stop(process, signal_it=False) == 0
    assert stored(database_url) == 2
    assert not any("Traceback" in line for line in seen)


def test_sighup_reloads_and_an_invalid_config_is_refused(
    sim: SimClient, run_config: Path, sim_server: Simulator, database_url: str
) -> None:
    process = start(run_config)
    seen: list[str] = []
    try:
        wait_for_line(process, "running: 1 targets", seen)
        good = run_config.read_text() + (
            f'\n[[targets]]\nname = "b"\nprovider = "openai-compatible"\n'
            f'base_url = "{sim_server.url}/v1"\nmodel = "gpt-4o-mini"\ninterval = "1s"\n'
            'timeout = "1s"\n'
        )
        run_config.write_text(good)
        process.send_signal(signal.SIGHUP)
        wait_for_line(process, "reloaded: 2 targets (1 added, 0 removed, 0 changed)", seen)
        wait_for_line(process, "b ", seen)  # the new target is probed
        run_config.write_text(good.replace('interval = "1s"', "interval = 1", 1))
        process.send_signal(signal.SIGHUP)
        line = wait_for_line(process, "reload refused", seen)
        assert "targets[0].interval" in line
        wait_for_line(process, "a ", seen)  # still probing with the old config
    finally:
        assert stop(process) == 0


def test_a_second_instance_on_the_same_sqlite_file_is_refused(
    sim: SimClient, tmp_path: Path, sim_server: Simulator
) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    db.upgrade(url)
    config = write_config(
        tmp_path / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1m"}],
        url,
    )
    first = start(config)
    seen: list[str] = []
    try:
        wait_for_line(first, "running: 1 targets", seen)
        second = start(config)
        assert second.wait(timeout=20) == 1
        assert second.stderr is not None
        assert "another `monitor run` is already using" in second.stderr.read()
        second.stderr.close()
    finally:
        assert stop(first) == 0


def test_status_reports_history_and_last_probes(
    sim: SimClient, run_config: Path, database_url: str
) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["probe", "-c", str(run_config)]).exit_code == 0
    result = runner.invoke(cli, ["status", "--json", "-c", str(run_config),
                                 "--spool", str(run_config.parent / "spool.jsonl")])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["probes"] == 1 and status["targets"] == 1
    assert status["schema_revision"] == db.head_revision()
    assert status["last_probes"][0]["target"] == "a" and status["last_probes"][0]["ok"]
    assert status["spool_backlog"] == 0
    text = runner.invoke(cli, ["status", "-c", str(run_config)]).output
    assert "1 probes of 1 targets" in text


@pytest.mark.parametrize("instances", [2, 3])
def test_several_instances_on_postgresql_probe_each_slot_exactly_once(
    sim: SimClient, tmp_path: Path, sim_server: Simulator, postgres_url: str, instances: int
) -> None:
    empty_postgres(postgres_url)
    config = write_config(
        tmp_path / "monitor.toml",
        [{"name": name, "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1s", "timeout": "1s"} for name in ("a", "b")],
        postgres_url,
    )
    processes = [start(config) for _ in range(instances)]
    seen: list[str] = []
    try:
        for process in processes:
            wait_for_line(process, "running: 2 targets", seen)
        time.sleep(3)
        processes[0].kill()  # SIGKILL: no goodbye; the others must cover its slots
        processes[0].wait(timeout=10)
        time.sleep(3)
    finally:
        codes = [stop(p) for p in processes[1:]]
        if processes[0].stderr is not None:
            processes[0].stderr.close()
    assert codes == [0] * (instances - 1)
    engine = db.open_store(postgres_url)
    try:
        with engine.connect() as connection:
            slots = connection.execute(
                select(SlotRow.target_id, SlotRow.slot_at, SlotRow.state, SlotRow.probe_uid)
                .order_by(SlotRow.target_id, SlotRow.slot_at)
            ).all()
            probes = connection.execute(select(ProbeRow.uid)).scalars().all()
    finally:
        engine.dispose()
    probed = [s for s in slots if s.state == "probed"]
    # Every probe belongs to exactly one slot, and every slot was probed at most once.
    assert sorted(s.probe_uid for s in probed) == sorted(probes)
    assert len({(s.target_id, s.slot_at) for s in slots}) == len(slots)
    # No slot was lost when an instance died: each target's slots are one second apart.
    for target_id in {s.target_id for s in slots}:
        times = [s.slot_at for s in slots if s.target_id == target_id]
        assert len(times) >= 5
        gaps = {round((b - a).total_seconds()) for a, b in itertools.pairwise(times)}
        assert gaps == {1}, (target_id, times)


def test_sigkill_then_restart_leaves_a_consistent_database(
    sim: SimClient, run_config: Path, database_url: str
) -> None:
    seen: list[str] = []
    first = start(run_config)
    wait_for_line(first, "a  ok", seen)
    time.sleep(0.4)  # likely mid-probe or mid-write
    first.kill()
    first.wait(timeout=10)
    if first.stderr is not None:
        first.stderr.close()
    before = stored(database_url)
    engine = db.open_store(database_url)
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    engine.dispose()
    second = start(run_config)  # the SQLite instance lock died with the first process
    try:
        wait_for_line(second, "running: 1 targets", seen)
        wait_for_line(second, "a  ok", seen)
    finally:
        assert stop(second) == 0
    assert stored(database_url) > before


@pytest.mark.parametrize(
    ("budget", "reason"),
    [
        pytest.param({"daily_request_budget": 2}, "daily request budget spent (2 of 2", id="requests"),
        pytest.param({"daily_token_budget": 20}, "daily token budget spent (", id="tokens"),
    ],
)
def test_a_spent_daily_budget_skips_slots_until_the_next_utc_day(
    sim: SimClient, engine: Engine, make_daemon: Any, budget: dict[str, int], reason: str
) -> None:
    daemon = make_daemon(engine, {"name": "thrifty", "interval": "1s", "timeout": "1s", **budget})
    sent = [daemon.tick(T0 + timedelta(seconds=s)) for s in range(4)]
    assert sent == [1, 1, 0, 0]  # each canary costs 15 tokens: 2 probes spend 20 tokens too
    with engine.connect() as connection:
        skipped = connection.execute(
            select(SlotRow.reason).where(SlotRow.state == "skipped")).scalars().all()
    assert len(skipped) == 2 and all(r.startswith(reason) for r in skipped)
    assert daemon.tick(T0 + timedelta(days=1)) == 1


def test_results_arriving_during_a_drain_are_neither_lost_nor_left_behind(
    sim: SimClient, make_daemon: Any, postgres_through_proxy: tuple[str, Proxy]
) -> None:
    url, proxy = postgres_through_proxy
    engine = db.open_store(url)
    daemon = make_daemon(engine, {"name": "a", "interval": "1m"})
    template = daemon.probe_target(daemon.settings.targets[0], T0)
    assert template is not None
    proxy.cut()
    for _ in range(300):
        daemon.store(replace(template, uid=uuid.uuid4().hex))
    proxy.restore()
    stop_adding = threading.Event()

    def keep_adding() -> None:
        while not stop_adding.wait(0.002):  # a busy daemon: ~hundreds of results a second
            daemon.store(replace(template, uid=uuid.uuid4().hex))

    adder = threading.Thread(target=keep_adding)
    adder.start()
    try:
        daemon.drain()
    finally:
        stop_adding.set()
        adder.join()
    daemon.drain()
    assert daemon.spool.backlog() == 0
    daemon.store(replace(template, uid=uuid.uuid4().hex))  # straight to the database again
    assert daemon.spool.backlog() == 0
    with engine.connect() as connection:
        uids = connection.execute(select(ProbeRow.uid)).scalars().all()
    assert len(uids) == len(set(uids)) >= 302
    engine.dispose()


@pytest.mark.parametrize("now", [
    pytest.param(datetime(2019, 3, 1, 0, 0, 0, 123000, tzinfo=UTC), id="past"),
    pytest.param(datetime(2031, 7, 15, 23, 59, 59, 999000, tzinfo=UTC), id="future-midnight"),
])
def test_a_probe_is_stored_at_the_daemons_clock_not_the_wall_clock(
    sim: SimClient, engine: Engine, make_settings: MakeSettings, tmp_path: Path, now: datetime
) -> None:
    """One clock governs a slot, its probe's stored time and the budget day: tick(now), and
    a scheduled probe_target that reads the daemon's clock, both store `now` as started_at."""
    settings = make_settings({"name": "a", "interval": "1m"}, {"name": "b", "interval": "1m"})
    daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"),
                    clock=lambda: now + timedelta(minutes=1))
    daemon.prober.register(settings.targets)
    try:
        assert daemon.tick(now) == 2
        assert daemon.probe_target(settings.targets[0]) is not None  # the next slot, by clock
    finally:
        daemon.close()
    with engine.connect() as connection:
        stored = connection.execute(select(ProbeRow.started_at).order_by(ProbeRow.id)).all()
    assert [row.started_at for row in stored] == [now, now, now + timedelta(minutes=1)]
