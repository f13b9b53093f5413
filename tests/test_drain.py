"""Draining the spool is bounded: one drain call returns whatever the arrival rate, and
`monitor run` honours SIGTERM in the middle of a drain. Nothing is lost, duplicated or written
out of order on the way back to direct writes."""

from __future__ import annotations

import signal
import threading
import time
import uuid
import zlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from monitor import defaults
from monitor.daemon import Daemon
from monitor.domain import ProbeResult
from monitor.sim import SimClient, Simulator
from monitor.store import db
from monitor.store.models import ProbeRow
from monitor.store.spool import Spool, encode
from tests.conftest import write_config
from tests.proxy import Proxy
from tests.test_daemon import start
from tests.waiting import wait_until

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
# A drain call may take its budget plus one batch; on a loaded 2-core machine a batch can take
# seconds, so the deadline is generous. The bug it guards against never returned at all.
CALL_DEADLINE_S = 30.0


def uids_in_id_order(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(select(ProbeRow.uid).order_by(ProbeRow.id)).scalars())


def drain_within(daemon: Daemon, seconds: float) -> int:
    """One drain call in a thread; fails if it has not returned within `seconds`."""
    returned: list[int] = []
    caller = threading.Thread(target=lambda: returned.append(daemon.drain()), daemon=True)
    caller.start()
    caller.join(seconds)
    assert not caller.is_alive(), f"a drain call did not return within {seconds:g} s"
    return returned[0]


def test_results_arriving_during_a_drain_are_neither_lost_nor_left_behind(
    sim: SimClient, make_daemon: Any, postgres_through_proxy: tuple[str, Proxy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(defaults, "DRAIN_BUDGET_S", 0.5)
    url, proxy = postgres_through_proxy
    engine = db.open_store(url)
    daemon = make_daemon(engine, {"name": "a", "interval": "1m"})
    template = daemon.probe_target(daemon.settings.targets[0], T0)
    assert template is not None
    stored_in_order = [template.uid]

    def store_one() -> None:
        result = replace(template, uid=uuid.uuid4().hex)
        stored_in_order.append(result.uid)
        daemon.store(result)

    proxy.cut()
    for _ in range(300):
        store_one()
    proxy.restore()
    stop_adding = threading.Event()

    def keep_adding() -> None:
        # As fast as the spool takes them: faster than a drain can write them back.
        while not stop_adding.is_set():
            store_one()

    adder = threading.Thread(target=keep_adding)
    adder.start()
    try:
        for _ in range(3):  # every call returns, although results never stop arriving
            drain_within(daemon, CALL_DEADLINE_S)
    finally:
        stop_adding.set()
        adder.join()
    deadline = time.monotonic() + 60
    while not daemon.spool.empty() and time.monotonic() < deadline:  # the next calls carry on
        drain_within(daemon, CALL_DEADLINE_S)
    assert daemon.spool.backlog() == 0
    # The spool is empty, so the daemon writes straight to the database again.
    direct = replace(template, uid=uuid.uuid4().hex)
    stored_in_order.append(direct.uid)
    assert daemon.store(direct) is not None
    assert daemon.spool.backlog() == 0
    # Every result exactly once, in the order it was stored.
    assert uids_in_id_order(engine) == stored_in_order
    engine.dispose()


def test_the_switch_back_to_direct_writes_keeps_the_order(
    sim: SimClient, engine: Engine, make_daemon: Any
) -> None:
    """Results arriving while the last batch is written wait for it; none overtakes it."""
    daemon = make_daemon(engine, {"name": "a", "interval": "1m"})
    template = daemon.probe_target(daemon.settings.targets[0], T0)
    assert template is not None
    spooled = [replace(template, uid=uuid.uuid4().hex) for _ in range(3)]
    with daemon._lock:  # as after an outage: spooling, three results waiting
        daemon._spooling = True
    for result in spooled:
        daemon.store(result)
    late: list[str] = []
    save_many = daemon.recorder.save_many
    writers: list[threading.Thread] = []

    def save_and_race(batch: list[ProbeResult]) -> None:
        # A probe finishing while the spool's last batch is written.
        result = replace(template, uid=uuid.uuid4().hex)
        late.append(result.uid)
        writer = threading.Thread(target=daemon.store, args=(result,))
        writer.start()
        writers.append(writer)
        save_many(batch)

    daemon.recorder.save_many = save_and_race  # type: ignore[method-assign]
    daemon.drain()
    daemon.recorder.save_many = save_many  # type: ignore[method-assign]
    for writer in writers:
        writer.join(10)
    daemon.drain()  # whatever the racing probes spooled
    assert daemon.spool.empty()
    assert uids_in_id_order(engine)[:4] == [template.uid] + [r.uid for r in spooled]
    assert sorted(uids_in_id_order(engine)[4:]) == sorted(late)


def test_a_drain_ends_at_its_next_batch_once_the_daemon_is_stopping(
    sim: SimClient, engine: Engine, make_daemon: Any
) -> None:
    daemon = make_daemon(engine, {"name": "a", "interval": "1m"})
    template = daemon.probe_target(daemon.settings.targets[0], T0)
    assert template is not None
    with daemon._lock:
        daemon._spooling = True
    write_spool(daemon.spool, template, 1500)
    save_many = daemon.recorder.save_many
    batches: list[int] = []

    def save_then_stop(batch: list[ProbeResult]) -> None:
        save_many(batch)
        batches.append(len(batch))
        daemon.stopping.set()  # SIGTERM arrives while the first batch is written

    daemon.recorder.save_many = save_then_stop  # type: ignore[method-assign]
    assert daemon.drain() == batches[0] == 500
    assert len(batches) == 1 and daemon.spool.backlog() == 1000
    # At shutdown the final drain runs to its deadline; the rest waits for the next start.
    daemon.recorder.save_many = save_many  # type: ignore[method-assign]
    assert daemon.drain(deadline=time.monotonic() - 1) == 0
    assert daemon.drain(deadline=time.monotonic() + 60) == 1000
    assert daemon.spool.empty()


def write_spool(spool: Spool, template: ProbeResult, count: int) -> list[str]:
    """`count` copies of `template` with fresh uids straight into the spool file: encoded once
    (each line's checksum recomputed) and written at once, not fsync'd one by one."""
    text = encode(template).split(b" ", 1)[1].rstrip(b"\n")
    assert text.count(template.uid.encode()) == 1
    uids = [uuid.uuid4().hex for _ in range(count)]
    lines = []
    for uid in uids:
        line = text.replace(template.uid.encode(), uid.encode())
        lines.append(f"{zlib.crc32(line):08x} ".encode() + line + b"\n")
    spool.path.parent.mkdir(parents=True, exist_ok=True)
    with open(spool.path, "ab") as file:
        file.write(b"".join(lines))
    return uids


def test_sigterm_in_the_middle_of_a_drain_exits_within_the_probe_timeout(
    sim: SimClient, tmp_path: Path, sim_server: Simulator, database_url: str, engine: Engine,
    make_daemon: Any,
) -> None:
    # A backlog far longer to drain than the probe timeout: 60,000 results from an outage.
    daemon = make_daemon(engine, {"name": "a", "interval": "1m"})
    template = daemon.probe_target(daemon.settings.targets[0], T0)
    assert template is not None
    spool = Spool(tmp_path / "run" / "spool.jsonl")
    spooled = len(write_spool(spool, template, 60_000))
    config = write_config(
        tmp_path / "run" / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1s", "timeout": "1s"}],
        database_url,
    )
    run = start(config)
    try:
        run.wait_for("running: 1 targets")
        # The drain job's first run is 5 s after the start; it has begun once an offset exists.
        wait_until(spool.offset_path.exists, "the drain to start")
        signalled = time.monotonic()
        run.process.send_signal(signal.SIGTERM)
        code = run.process.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        if run.process.poll() is None:
            run.process.kill()
        run.process.wait()
        log = run.log.close()
    assert code == 0, log
    # The probe timeout (1 s), a batch or two and the exit: about 2 s idle. Draining the whole
    # backlog takes far longer (55 s with the old code), so an exit that waited for it fails
    # here; the bound leaves room for a machine whose cores are both busy.
    assert took < 20, f"exit took {took:.1f} s after SIGTERM:\n{log}"
    assert "finishing in-flight probes" in log
    # Nothing lost: what the database has plus what still waits is everything.
    with engine.connect() as connection:
        stored = connection.execute(select(func.count(ProbeRow.id))).scalar_one()
    sent = sim.stats()["by_path"]["/v1/chat/completions"]
    assert 0 < spool.backlog() < spooled
    assert stored + spool.backlog() == sent + spooled
