"""Skipped slots are data: each is written when its time comes (never a backoff's worth at
once), with a stable kind, kept from every instance while reserved, and shown by the report,
`monitor status` and /metrics; on both databases and, for `monitor run`, as a real process."""

from __future__ import annotations

import json
import logging
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from monitor.cli import cli
from monitor.daemon.slots import slot_at
from monitor.health import metrics_snapshot
from monitor.render.metrics import exposition_registry, render_metrics
from monitor.sim import SimClient, Simulator
from monitor.store import db
from monitor.store.models import SlotRow
from tests.conftest import write_config
from tests.test_daemon import start
from tests.waiting import wait_until

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SECONDS = timedelta(seconds=1)


def slot_rows(engine: Engine) -> dict[datetime, Any]:
    with engine.connect() as connection:
        rows = connection.execute(select(SlotRow.__table__).order_by(SlotRow.slot_at)).all()
    return {row.slot_at: row for row in rows}


def requests_sent(sim: SimClient) -> int:
    return int(sim.stats()["by_path"].get("/v1/chat/completions", 0))


def test_a_daemon_stopped_mid_backoff_has_skipped_only_the_slots_whose_time_came(
    sim: SimClient, engine: Engine, make_daemon: Any, database_url: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    limited = {"name": "limited", "interval": "10s", "timeout": "5s"}
    first = make_daemon(engine, limited)
    start_slot = slot_at(first.settings.targets[0], T0)
    ahead = [start_slot + 10 * n * SECONDS for n in range(1, 6)]
    sim.enqueue({"fault": "rate_limited"})  # retry-after: the window's end, about 60 s away
    with caplog.at_level(logging.INFO, logger="monitor"):
        assert first.tick(start_slot) == 1
    said = [r.getMessage() for r in caplog.records if "rate limited" in r.getMessage()]
    until = (start_slot + 60 * SECONDS).strftime("%H:%M:%S")  # or a second less
    assert len(said) == 1 and said[0].startswith("limited rate limited (HTTP 429): next probe "
                                                 f"after {until[:-1]}"), said
    # Reserved: kept from every instance, and not (yet) a skip.
    rows = slot_rows(engine)
    assert {at: r.state for at, r in rows.items()} == {
        start_slot: "probed", **{at: "reserved" for at in ahead}}
    assert first.tick(ahead[0]) == first.tick(ahead[1]) == 0
    first.close()  # stopped two slots into the backoff

    rows = slot_rows(engine)
    assert [at for at, r in rows.items() if r.state == "skipped"] == ahead[:2]
    assert [at for at, r in rows.items() if r.state == "reserved"] == ahead[2:]
    assert {(r.reason_kind, r.reason.split(",")[0]) for r in rows.values()
            if r.state == "skipped"} == {("rate_limited", "rate limited: HTTP 429")}

    # Another instance (or this one restarted) knows nothing of the backoff: the reservation
    # keeps it from probing, and it records the slot as skipped when its time comes.
    second = make_daemon(engine, limited)
    sent = requests_sent(sim)
    assert second.tick(ahead[2]) == 0
    assert requests_sent(sim) == sent
    row = slot_rows(engine)[ahead[2]]
    assert (row.state, row.reason_kind, row.instance_id) == (
        "skipped", "rate_limited", second.instance_id)
    assert second.tick(start_slot + 70 * SECONDS) == 1  # the backoff is over
    second.close()

    # Shown: the report over the range, status over the last 24 h, /metrics over all time.
    config = str(write_config(tmp_path / "cli.toml", [{
        "name": "limited", "provider": "openai-compatible", "base_url": "http://127.0.0.1:9/v1",
        "model": "gpt-4o"}], database_url))
    clock = lambda: T0 + timedelta(minutes=5)
    runner = CliRunner()
    report = runner.invoke(cli, ["report", "--format", "json", "--since", "1h", "--config",
                                 config], obj=clock)
    assert report.exit_code == 0, report.output
    assert json.loads(report.output)["targets"][0]["skipped"] == {"rate_limited": 3}
    status = runner.invoke(cli, ["status", "--json", "--config", config], obj=clock)
    assert json.loads(status.output)["skipped_24h"] == {"limited": {"rate_limited": 3}}
    text = runner.invoke(cli, ["status", "--config", config], obj=clock).output
    assert "skipped slots in the last 24 h\n  limited  rate_limited 3" in text
    later = runner.invoke(cli, ["status", "--config", config],
                          obj=lambda: T0 + timedelta(days=2)).output
    assert "skipped slots   none in the last 24 h" in later
    body, _ = render_metrics(exposition_registry(lambda: metrics_snapshot(engine)), "")
    exposed = body.decode()
    assert 'monitor_slots_skipped_total{reason="rate_limited",target="limited"} 3.0' in exposed
    assert 'monitor_slots_skipped_total{reason="budget_spent",target="limited"} 0.0' in exposed


def test_a_spent_budget_is_logged_once_and_each_slot_skipped_as_budget_spent(
    sim: SimClient, engine: Engine, make_daemon: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    daemon = make_daemon(engine, {"name": "thrifty", "interval": "1s", "timeout": "1s",
                                  "daily_request_budget": 1})
    with caplog.at_level(logging.INFO, logger="monitor"):
        sent = [daemon.tick(T0 + n * SECONDS) for n in range(5)]
    assert sent == [1, 0, 0, 0, 0]
    told = [r.getMessage() for r in caplog.records if "budget" in r.getMessage()]
    assert told == [("thrifty: daily request budget spent (1 of 1 requests today, UTC); "
                    "skipping its slots until the next UTC day")]
    kinds = [r.reason_kind for r in slot_rows(engine).values() if r.state == "skipped"]
    assert kinds == ["budget_spent"] * 4


def test_monitor_run_stopped_mid_backoff_wrote_no_slot_ahead_of_its_time(
    sim: SimClient, tmp_path: Path, sim_server: Simulator, database_url: str
) -> None:
    """`monitor run` as a process: a 429 with a retry-after of half a minute, SIGTERM a few
    slots into it. Every skipped row is a slot that came while it ran; the rest stay reserved."""
    sim.update(rate_limits={"requests_per_window": 1, "window_s": 30})
    config = write_config(
        tmp_path / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1s", "timeout": "1s"}],
        database_url,
    )
    run = start(config)
    engine = db.open_store(database_url)
    try:
        run.wait_for("rate limited (HTTP 429): next probe after")

        def skipped() -> list[datetime]:
            return [at for at, r in slot_rows(engine).items() if r.state == "skipped"]

        wait_until(lambda: len(skipped()) >= 3, "3 slots skipped while backing off")
    finally:
        run.process.send_signal(signal.SIGTERM)
        assert run.stop(signal_it=False) == 0
    stopped = datetime.now(UTC)
    try:
        rows = slot_rows(engine)
    finally:
        engine.dispose()
    skips = [r for r in rows.values() if r.state == "skipped"]
    reserved = [r for r in rows.values() if r.state == "reserved"]
    assert len(skips) >= 3 and all(r.reason_kind == "rate_limited" for r in skips)
    assert all(r.slot_at <= stopped for r in skips)
    assert reserved and min(r.slot_at for r in reserved) > max(r.slot_at for r in skips)
    assert "skipping" not in run.log.text()
