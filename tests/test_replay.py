"""`monitor replay`: stored requests re-sent over loopback to the simulator, answers stored on
both databases, linked to their originals, compared; batches resumed without a second send."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from monitor import probe
from monitor.cli.replay import replay_command
from monitor.config.targets import effective_config
from monitor.detect.stats import percentile
from monitor.domain import Settings, Target
from monitor.probe import providers
from monitor.replay.batch import BatchSpec, Latency, _latency, run_batch
from monitor.replay.diff import changed_fields, render_outcome, render_summary
from monitor.replay.send import ReplayError, plan, replay_probe
from monitor.sim import SimClient
from monitor.store import db
from monitor.store.models import ProbeRow, ReplayItemRow, RequestPayloadRow, TargetRow
from monitor.store.records import Recorder
from tests.conftest import MakeSettings
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]


def store_probes(engine: Engine, target: Target, count: int = 1) -> list[int]:
    """Probe `target` `count` times, as the daemon would, and store each result."""
    recorder = Recorder(engine)
    recorder.register(target.name, target.config_hash, effective_config(target))
    with providers.new_session() as session:
        return [recorder.save(probe.run(target, session)) for _ in range(count)]


def target(settings: Settings, name: str) -> Target:
    return next(t for t in settings.targets if t.name == name)


def sent(sim: SimClient) -> int:
    return int(sim.stats()["by_path"].get("/v1/chat/completions", 0))


def batch(settings: Settings, source: str = "canary", to: str | None = None,
          concurrency: int = 3, limit: int | None = None) -> BatchSpec:
    now = datetime.now(UTC)
    return BatchSpec(source, target(settings, to or source), "1h", None,
                     now - timedelta(hours=1), None, limit, concurrency)


def replays_per_original(engine: Engine) -> dict[int, int]:
    with engine.connect() as connection:
        return dict(connection.execute(
            select(ProbeRow.replay_of, func.count()).where(ProbeRow.replay_of.is_not(None))
            .group_by(ProbeRow.replay_of)).all())


# --- one probe ------------------------------------------------------------------------------


def test_replay_to_the_same_target_sends_the_stored_payload_and_links_the_answer(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, database_url: str
) -> None:
    settings = make_settings({"name": "canary"}, database_url=database_url)
    [original] = store_probes(engine, settings.targets[0])

    outcome = replay_probe(engine, settings, original, repeat=2)

    assert [r.replay_of for r in outcome.replays] == [original, original]
    assert all(changed_fields(outcome.original, r) == [] for r in outcome.replays)
    with engine.connect() as connection:
        payload_ids = set(connection.execute(select(ProbeRow.request_payload_id)).scalars())
        assert len(payload_ids) == 1  # the very same stored request, three times
    text = render_outcome(outcome)
    assert "content: unchanged" in text
    assert f"original #{original}" in text and f"replay #{outcome.replays[1].probe_id}" in text
    assert sent(sim) == 3


def test_a_fingerprint_change_between_original_and_replay_is_marked(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, database_url: str
) -> None:
    settings = make_settings({"name": "canary"}, database_url=database_url)
    [original] = store_probes(engine, settings.targets[0])
    sim.update(fingerprints=[{"value": "fp_new"}])

    outcome = replay_probe(engine, settings, original)

    [replayed] = outcome.replays
    assert replayed.system_fingerprint == "fp_new"
    assert changed_fields(outcome.original, replayed) == ["system_fingerprint"]
    row = next(line for line in render_outcome(outcome).splitlines()
               if "system_fingerprint" in line)
    assert row.startswith("*") and "fp_6ec83003ad" in row and "fp_new" in row


def test_replay_to_another_target_replaces_the_model_and_says_so(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, database_url: str
) -> None:
    settings = make_settings({"name": "canary"},
                             {"name": "pinned", "model": "gpt-4o-2024-08-06"},
                             database_url=database_url)
    [original] = store_probes(engine, target(settings, "canary"))
    sim.update(fingerprints=[{"value": "fp_pinned"}])

    outcome = replay_probe(engine, settings, original, to="pinned")

    assert outcome.model_change == ("gpt-4o", "gpt-4o-2024-08-06")
    assert outcome.replays[0].target == "pinned"
    assert sim.stats()["by_model"] == {"gpt-4o": 1, "gpt-4o-2024-08-06": 1}
    with engine.connect() as connection:
        payloads = connection.execute(
            select(RequestPayloadRow.payload).join(
                ProbeRow, ProbeRow.request_payload_id == RequestPayloadRow.id)
            .where(ProbeRow.id == outcome.replays[0].probe_id)).scalar_one()
    assert payloads["model"] == "gpt-4o-2024-08-06"
    text = render_outcome(outcome)
    assert "model in the payload replaced: 'gpt-4o' -> 'gpt-4o-2024-08-06'" in text
    assert "to pinned" in text


def test_replay_to_an_azure_target_uses_its_route_key_and_drops_the_model(
    sim: SimClient, sim_server: Any, make_settings: MakeSettings, engine: Engine
) -> None:
    sim.update(api_keys=["azure-key-123"])
    settings = make_settings(
        {"name": "canary", "api_key_env": "OPENAI_KEY"},
        {"name": "azure", "provider": "azure", "base_url": sim_server.url,
         "deployment": "gpt-4o-prod", "api_version": "2024-10-21", "api_key_env": "AZ_KEY"},
        OPENAI_KEY="azure-key-123", AZ_KEY="azure-key-123")
    [original] = store_probes(engine, target(settings, "canary"))

    outcome = replay_probe(engine, settings, original, to="azure")

    [replayed] = outcome.replays
    assert replayed.ok and replayed.http_status == 200
    assert outcome.model_change == ("gpt-4o", None)
    assert "/openai/deployments/gpt-4o-prod/chat/completions" in sim.stats()["by_path"]
    assert "nothing (its deployment decides)" in render_outcome(outcome)


def test_changed_content_is_shown_as_an_escaped_unified_diff(
    sim: SimClient, make_settings: MakeSettings, engine: Engine
) -> None:
    settings = make_settings({"name": "canary"})
    [original] = store_probes(engine, settings.targets[0])
    sim.enqueue({"content": "ping\x1b[2J\u202eevil"})

    outcome = replay_probe(engine, settings, original)
    text = render_outcome(outcome)

    assert "-pong" in text
    assert "+ping\\x1b[2J\\u202eevil" in text
    assert "\x1b" not in text and "\u202e" not in text
    assert "content" in changed_fields(outcome.original, outcome.replays[0])


def test_the_cli_prints_json_for_scripts_without_control_characters(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, database_url: str
) -> None:
    settings = make_settings({"name": "canary"}, database_url=database_url)
    [original] = store_probes(engine, settings.targets[0])
    sim.enqueue({"content": "\x9b31m"})

    result = CliRunner().invoke(replay_command, [str(original), "--json", "-c",
                                                 settings.config_path])

    assert result.exit_code == 0, result.output
    assert "\x9b" not in result.output
    document = json.loads(result.output)
    assert document["original"]["probe_id"] == original
    [replayed] = document["replays"]
    assert replayed["replay_of"] == original and replayed["content"] == "\x9b31m"
    assert "content" in replayed["changed"]


def test_unknown_probe_and_unconfigured_targets_are_clear_errors(
    sim: SimClient, make_settings: MakeSettings, engine: Engine
) -> None:
    settings = make_settings({"name": "canary"})
    [original] = store_probes(engine, settings.targets[0])
    with pytest.raises(ReplayError, match="no probe #999"):
        replay_probe(engine, settings, 999)
    with pytest.raises(ReplayError, match="unknown target 'nope'"):
        replay_probe(engine, settings, original, to="nope")
    renamed = make_settings({"name": "other"})
    with pytest.raises(ReplayError, match="no longer configures .* --to"):
        replay_probe(engine, renamed, original)


def test_a_payload_monitor_cannot_send_unchanged_is_refused(
    make_settings: MakeSettings,
) -> None:
    destination = make_settings({"name": "canary"}).targets[0]
    odd = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
           "stream": True, "stream_options": {"include_usage": False}}
    with pytest.raises(ReplayError, match="cannot be re-sent exactly"):
        plan(odd, "canary", destination)
    streamed = {**odd, "stream_options": {"include_usage": True}, "seed": 1}
    chosen = plan(streamed, "canary", destination)
    assert providers.payload(chosen.target) == streamed and chosen.target.stream


# --- batches --------------------------------------------------------------------------------


def test_a_stopped_batch_resumes_without_sending_any_request_twice(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, database_url: str
) -> None:
    settings = make_settings({"name": "canary"}, database_url=database_url)
    originals = store_probes(engine, settings.targets[0], 12)
    sim.reset()
    sim.update(latency={"base_ms": 20})
    stop = threading.Event()
    answered = 0

    def stop_after_five(n: int) -> None:
        nonlocal answered
        answered += n
        if answered >= 5:
            stop.set()

    first = run_batch(engine, batch(settings), stop, on_progress=stop_after_five)

    assert first.stopped == "stopped on request" and not first.resumed
    assert 5 <= first.done < 12 and first.pending == 12 - first.done and first.lost == 0
    assert sent(sim) == first.done

    second = run_batch(engine, batch(settings), threading.Event())

    assert second.resumed and second.run_id == first.run_id
    assert second.done == 12 and second.pending == 0 and second.stopped is None
    assert second.sent_now == 12 - first.done
    assert sent(sim) == 12
    assert replays_per_original(engine) == dict.fromkeys(originals, 1)
    assert "run complete" in render_summary(second)

    # Finished: the same command now starts a new run, which replays the originals again.
    third = run_batch(engine, batch(settings), threading.Event())
    assert not third.resumed and third.run_id != first.run_id and third.done == 12


def test_batch_summary_counts_changes_and_latency_before_and_after(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, database_url: str
) -> None:
    settings = make_settings({"name": "canary"},
                             {"name": "pinned", "model": "gpt-4o-2024-08-06"},
                             database_url=database_url)
    originals = store_probes(engine, target(settings, "canary"), 6)
    store_probes(engine, target(settings, "pinned"), 2)  # another target: not in the batch
    sim.update(fingerprints=[{"value": "fp_new"}], latency={"base_ms": 30})
    sim.enqueue({"content": "different"})

    summary = run_batch(engine, batch(settings, to="pinned", concurrency=1),
                        threading.Event())

    assert summary.items == summary.done == 6
    assert summary.fingerprint_changed == 6
    assert summary.content_changed == 1
    assert summary.model_changed == 0  # the alias already answered with this snapshot
    assert summary.model_change == ("gpt-4o", "gpt-4o-2024-08-06")
    assert summary.replay.p50_ms is not None and summary.replay.p50_ms >= 30  # never early
    # "Before" is the originals' own latency, as stored (not a measure of how fast they were).
    with engine.connect() as connection:
        before = sorted(connection.execute(select(ProbeRow.total_ms)
                                           .where(ProbeRow.id.in_(originals))).scalars())
    assert summary.original.p50_ms == percentile(before, 50)
    assert summary.original.p95_ms == percentile(before, 95)
    text = render_summary(summary)
    assert "changed: content 1, fingerprint 6, model 0" in text
    assert "p95" in text


def test_concurrent_workers_register_a_new_destination_once(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, database_url: str
) -> None:
    settings = make_settings({"name": "canary"}, {"name": "fresh", "model": "gpt-4o-mini"},
                             database_url=database_url)
    store_probes(engine, target(settings, "canary"), 16)
    sim.update(latency={"base_ms": 20})

    summary = run_batch(engine, batch(settings, to="fresh", concurrency=8), threading.Event())

    assert summary.done == 16 and summary.failed == 0
    with engine.connect() as connection:
        configs = connection.execute(
            select(func.count(func.distinct(ProbeRow.target_config_id)))
            .join(TargetRow, TargetRow.id == ProbeRow.target_id)
            .where(TargetRow.name == "fresh")).scalar_one()
    assert configs == 1


def test_a_batch_waits_out_429s_and_retries_the_same_request(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, database_url: str
) -> None:
    settings = make_settings({"name": "canary"}, database_url=database_url)
    store_probes(engine, settings.targets[0], 8)
    sim.reset()
    sim.update(rate_limits={"requests_per_window": 3, "window_s": 1})

    summary = run_batch(engine, batch(settings, concurrency=4), threading.Event())

    outcomes = sim.stats()["by_outcome"]
    assert outcomes["ok"] == 8  # each request answered once
    assert outcomes.get("rate_limited", 0) >= 1
    assert summary.done == 8 and summary.failed == 0
    assert summary.rate_limited == outcomes["rate_limited"]


def test_a_batch_stops_at_the_destinations_daily_request_budget(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, database_url: str
) -> None:
    settings = make_settings({"name": "canary"},
                             {"name": "capped", "daily_request_budget": 3},
                             database_url=database_url)
    store_probes(engine, target(settings, "canary"), 5)
    store_probes(engine, target(settings, "capped"), 1)  # spends 1 of today's 3

    summary = run_batch(engine, batch(settings, to="capped"), threading.Event())

    assert summary.done == 2 and summary.pending == 3
    assert summary.stopped is not None and "daily request budget of capped" in summary.stopped
    assert "run the same command again to continue" in render_summary(summary)


def test_percentiles_interpolate_between_ranks() -> None:
    assert _latency([]) == Latency(None, None)
    assert percentile([10.0], 95) == 10.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(i) for i in range(101)], 95) == pytest.approx(95.0)


# --- interrupted processes ------------------------------------------------------------------


def _start_batch(config: str) -> subprocess.Popen[str]:
    code = "from monitor.cli.replay import replay_command; replay_command()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "--target", "canary", "--since", "1h",
         "--concurrency", "2", "-c", config],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def _wait_for_replays(engine: Engine, count: int, timeout_s: float = 30) -> None:
    def done() -> bool:
        with engine.connect() as connection:
            return connection.execute(select(func.count()).where(
                ReplayItemRow.state == "done")).scalar_one() >= count

    wait_until(done, f"{count} replays", timeout_s, poll_s=0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_killed_batch_process_resumes_and_never_sends_a_request_twice(
    signum: int, sim: SimClient, make_settings: MakeSettings, engine: Engine,
    database_url: str
) -> None:
    settings = make_settings({"name": "canary"}, database_url=database_url)
    originals = store_probes(engine, settings.targets[0], 20)
    sim.reset()
    sim.update(latency={"base_ms": 100})

    first = _start_batch(settings.config_path)
    _wait_for_replays(engine, 3)
    first.send_signal(signum)
    out, err = first.communicate(timeout=30)
    if signum == signal.SIGTERM:  # warm stop: what was in flight is finished and stored
        assert first.returncode == 1, err
        assert "stopped: stopped on request" in out
    with engine.connect() as connection:
        claimed = dict(connection.execute(select(ReplayItemRow.state, func.count())
                                          .group_by(ReplayItemRow.state)).all())
    done, lost, pending = (claimed.get(state, 0) for state in ("done", "sending", "pending"))
    sent_before = sent(sim)
    # A claim is committed before its request goes out: a killed process may have claimed
    # a request without sending it, never the other way round.
    assert done <= sent_before <= done + lost
    if signum == signal.SIGTERM:
        assert lost == 0

    second = _start_batch(settings.config_path)
    out, err = second.communicate(timeout=60)

    assert second.returncode == 0, err
    assert f"{20 - lost} of 20 stored requests replayed" in out
    assert sent(sim) == sent_before + pending  # nothing the killed process claimed went again
    assert replays_per_original(engine) == {o: 1 for o in originals[:20]
                                            if o in replays_per_original(engine)}
    assert len(replays_per_original(engine)) == 20 - lost


# --- schema ---------------------------------------------------------------------------------


def test_upgrading_to_replay_links_keeps_every_probe_with_foreign_keys_enforced(
    sim: SimClient, make_settings: MakeSettings, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, "0005")
    old = db.create(url)
    from tests.test_migrations import save_then

    canary = make_settings({"name": "canary"}).targets[0]
    with providers.new_session() as session:  # stored as the code of 0005 did
        stored = [save_then(old, probe.run(canary, session)) for _ in range(3)]
    old.dispose()

    db.upgrade(url)
    command.downgrade(db.alembic_config(url), "0005")
    db.upgrade(url)

    engine = db.open_store(url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
            rows = connection.execute(select(ProbeRow.id, ProbeRow.replay_of)).all()
        assert [(i, None) for i in stored] == [tuple(row) for row in rows]
        settings = make_settings({"name": "canary"}, database_url=url)
        [replayed] = replay_probe(engine, settings, stored[0]).replays
        assert replayed.replay_of == stored[0]
    finally:
        engine.dispose()
