"""`monitor run --workers N`: the targets shared out among processes, each target probed by one
of them on every slot, reloads and stops relayed, leftover spools of earlier workers drained."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import zlib
from collections import Counter
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, select

from monitor.cli import cli
from monitor.config import load
from monitor.daemon.workers import leftover_spools, share, spawn, spool_of
from monitor.sim import SimClient, Simulator
from monitor.store import db
from monitor.store.models import ProbeRow, SlotRow
from monitor.store.spool import Spool
from tests.conftest import MakeSettings, write_config
from tests.test_daemon import Run, probed_slots, start, stored
from tests.test_store import result as stored_result
from tests.waiting import wait_until


def test_every_target_belongs_to_exactly_one_worker(make_settings: MakeSettings) -> None:
    targets = make_settings(*[{"name": f"target-{i}"} for i in range(300)]).targets
    for workers in (1, 2, 3, 7):
        shares = [share(targets, worker, workers) for worker in range(workers)]
        assert sorted(t.name for s in shares for t in s) == sorted(t.name for t in targets)
        # Spread evenly enough (a stable hash, not the order they were listed in).
        assert min(len(s) for s in shares) > 0.6 * len(targets) / workers
    # Decided by the name alone: another order, or other targets beside it, move nobody.
    again = share(tuple(reversed(targets[:50])), 1, 2)
    assert sorted(t.name for t in again) == sorted(
        t.name for t in share(targets, 1, 2) if t in targets[:50])


def test_workers_share_the_postgresql_connections(postgres_url: str) -> None:
    """Each worker keeps its share of the pool, so an instance of any size stays within
    PostgreSQL's default max_connections (100)."""
    for workers, kept in ((1, db.POOL_SIZE), (2, db.POOL_SIZE // 2), (8, db.MIN_POOL_SIZE)):
        engine = db.create(postgres_url, workers)
        assert engine.pool.size() == kept  # type: ignore[attr-defined]
        engine.dispose()


def test_leftover_spools_are_those_of_workers_beyond_the_count(tmp_path: Path) -> None:
    path = str(tmp_path / "spool.jsonl")
    for worker in (1, 2, 5):
        Path(spool_of(path, worker)).write_text("")
    (tmp_path / "spool.jsonl.workerless").write_text("")
    (tmp_path / "spool.jsonl.worker2.offset").write_text("")
    assert spool_of(path, 0) == path
    assert leftover_spools(path, 2) == [spool_of(path, 2), spool_of(path, 5)]
    assert leftover_spools(path, 1) == [spool_of(path, w) for w in (1, 2, 5)]
    assert leftover_spools(path, 6) == []


def _names(workers: int, per_worker: int) -> list[str]:
    """Target names that give each worker `per_worker` of them."""
    names: list[str] = []
    counts: Counter[int] = Counter()
    for i in range(1000):
        name = f"t{i}"
        worker = zlib.crc32(name.encode()) % workers
        if counts[worker] < per_worker:
            counts[worker] += 1
            names.append(name)
        if len(names) == workers * per_worker:
            return names
    raise AssertionError("no such names")


def _wait_for_workers(run: Run, workers: int) -> list[int]:
    """Wait until every worker is running (their lines come in any order); their pids."""
    def started() -> list[int]:
        text = run.log.text()
        pids = [re.search(rf"worker {w} of {workers} \(pid (\d+)\)", text) for w in range(workers)]
        found = [int(m.group(1)) for m in pids if m is not None]
        return found if len(found) == workers and text.count("running:") == workers else []

    wait_until(started, f"{workers} workers running")
    return started()


def _config(tmp_path: Path, sim_server: Simulator, database_url: str,
            names: list[str]) -> Path:
    return write_config(
        tmp_path / "monitor.toml",
        [{"name": name, "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1s", "timeout": "1s"} for name in names],
        database_url)


def test_workers_share_the_targets_and_each_slot_is_probed_once(
    sim: SimClient, tmp_path: Path, sim_server: Simulator, database_url: str
) -> None:
    names = _names(2, 2)
    config = _config(tmp_path, sim_server, database_url, names)
    run = start(config, "--workers", "2")
    engine = db.open_store(database_url)
    try:
        _wait_for_workers(run, 2)
        wait_until(lambda: probed_slots(engine, 4) >= 3, "3 probed slots of each target")
        # A reload reaches every worker; the new target is probed by the one it belongs to.
        added = _names(2, 3)[-1]
        config = _config(tmp_path, sim_server, database_url, [*names, added])
        run.process.send_signal(signal.SIGHUP)
        wait_until(lambda: probed_slots(engine, 5) >= 2, "the added target probed")
    finally:
        code = run.stop()
    assert code == 0, run.log.text()
    log = run.log.text()
    assert "Traceback" not in log
    assert log.count("reloaded:") == 2 and log.count("stopped") == 2
    with engine.connect() as connection:
        slots = connection.execute(
            select(SlotRow.target_id, SlotRow.slot_at, SlotRow.instance_id, SlotRow.probe_uid)
            .where(SlotRow.state == "probed")).all()
        probes = connection.execute(select(ProbeRow.uid)).scalars().all()
    engine.dispose()
    assert sorted(s.probe_uid for s in slots) == sorted(probes)
    assert len({(s.target_id, s.slot_at) for s in slots}) == len(slots)
    # Each target was probed by one process only, and both processes probed.
    by_target: dict[int, set[str]] = {}
    for s in slots:
        by_target.setdefault(s.target_id, set()).add(s.instance_id)
    assert all(len(instances) == 1 for instances in by_target.values()), by_target
    assert len({s.instance_id for s in slots}) == 2


def test_a_worker_that_dies_stops_the_instance(
    sim: SimClient, tmp_path: Path, sim_server: Simulator, database_url: str
) -> None:
    config = _config(tmp_path, sim_server, database_url, _names(2, 1))
    run = start(config, "--workers", "2")
    try:
        pid = _wait_for_workers(run, 2)[1]
        os.kill(pid, signal.SIGKILL)
        run.wait_for("worker 1 ended on its own")
    finally:
        code = run.stop(signal_it=False)
    assert code == 1  # for the supervisor to restart the instance
    assert "stopped" in run.log.text()  # the other worker stopped warm


def test_probes_left_in_an_earlier_workers_spool_are_stored(
    sim: SimClient, tmp_path: Path, sim_server: Simulator, database_url: str
) -> None:
    """A run with fewer workers (here one) stores what a worker of an earlier run left."""
    config = _config(tmp_path, sim_server, database_url, ["a"])
    leftover = Spool(spool_of(str(tmp_path / "spool.jsonl"), 3))
    target = load(str(config)).targets[0]
    result = stored_result(target_name="a", config_hash=target.config_hash)
    leftover.append(result)
    run = start(config, "--once")
    assert run.stop(signal_it=False) == 0, run.log.text()
    assert "wrote 1 probes left in" in run.log.text()
    assert stored(database_url) == 2 and leftover.empty()
    engine = db.open_store(database_url)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(ProbeRow).where(
            ProbeRow.uid == result.uid)).scalar_one() == 1
    engine.dispose()


def test_status_counts_what_waits_in_every_workers_spool(
    tmp_path: Path, sim_server: Simulator, database_url: str
) -> None:
    config = _config(tmp_path, sim_server, database_url, ["a"])
    spool = str(tmp_path / "spool.jsonl")
    Spool(spool).append(stored_result(target_name="a"))
    for worker in (1, 2):
        Spool(spool_of(spool, worker)).append(stored_result(target_name="a"))
    status = CliRunner().invoke(cli, ["status", "--json", "-c", str(config), "--spool", spool])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["spool_backlog"] == 3


def test_stopping_workers_already_told_to_stop_sends_no_second_sigterm(tmp_path: Path) -> None:
    """Worker 0 relays the SIGTERM it gets, stops, then makes sure the others stop too: a
    second SIGTERM would cut their warm stop short (exit 1, in-flight probes lost)."""
    ready, stopping, received = tmp_path / "ready", tmp_path / "stopping", tmp_path / "received"

    def worker(_: int) -> None:  # a worker's warm stop, in miniature
        got: list[int] = []
        signal.signal(signal.SIGTERM, lambda *_: got.append(1))
        ready.write_text("")
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        stopping.write_text("")
        time.sleep(0.5)  # finishing in-flight work: when a second signal would land
        received.write_text(str(len(got)))

    family = spawn(2, worker)
    wait_until(ready.exists, "the worker to be ready for signals")
    family.relay(signal.SIGTERM)
    wait_until(stopping.exists, "the worker to begin its warm stop")
    family.stop()
    family.join()
    assert received.read_text() == "1"
    assert not family.failed
