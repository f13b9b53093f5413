"""`monitor export` / `monitor import`: probes moved between SQLite and PostgreSQL as JSON Lines,
every column equal on arrival, importing twice harmless."""

from __future__ import annotations

import io
import json
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, aliased

from monitor import probe
from monitor.cli.replay import export_command, import_command
from monitor.health import build_report
from monitor.probe import providers
from monitor.replay.send import replay_probe
from monitor.sim import SimClient
from monitor.store import blobs, db, transfer
from monitor.store.models import (
    PROBE_FIELDS,
    PROBES_WITH_ANSWERS,
    CheckResultRow,
    ProbeRow,
    RequestPayloadRow,
    TargetConfigRow,
    TargetRow,
)
from monitor.store.records import Recorder
from tests.conftest import MakeSettings, empty_postgres
from tests.test_replay import store_probes, target


@pytest.fixture
def other_url(database_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on the other backend: exports cross from SQLite to PostgreSQL and
    back."""
    if database_url.startswith("sqlite"):
        url: str = request.getfixturevalue("postgres_url")
        empty_postgres(url)
        return url
    path = tmp_path / "other.db"
    shutil.copy(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite:///{path}"


def a_varied_history(sim: SimClient, make_settings: MakeSettings, engine: Engine,
                     sim_url: str) -> None:
    """Plain, streamed, failed, Azure, a replay and a body that is not UTF-8."""
    settings = make_settings(
        {"name": "canary"}, {"name": "streamed", "stream": True},
        {"name": "azure", "provider": "azure", "base_url": sim_url,
         "deployment": "gpt-4o-prod", "api_version": "2024-10-21"},
        AZURE_OPENAI_API_KEY="azure-key")
    [first, _] = store_probes(engine, target(settings, "canary"), 2)
    store_probes(engine, target(settings, "streamed"))
    store_probes(engine, target(settings, "azure"))
    sim.enqueue({"fault": "http_503"})
    store_probes(engine, target(settings, "canary"))
    replay_probe(engine, settings, first)
    canary = target(settings, "canary")
    with providers.new_session() as session:
        result = probe.run(canary, session)
    Recorder(engine).save(replace(result, uid=uuid.uuid4().hex, raw_response=b"\xff\x00\xfe"))


def snapshot(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every probe by uid, every field (the facet's and the answer's wherever they are
    stored), with ids replaced by what they point at."""
    original = aliased(ProbeRow)
    query = (select(*PROBE_FIELDS, ProbeRow.response_headers_zlib, ProbeRow.raw_response_zlib,
                    TargetRow.name, TargetRow.created_at, TargetConfigRow.config_hash,
                    TargetConfigRow.config, TargetConfigRow.first_seen_at,
                    RequestPayloadRow.sha256, RequestPayloadRow.payload,
                    original.uid.label("original_uid"))
             .select_from(PROBES_WITH_ANSWERS)
             .join(TargetRow, TargetRow.id == ProbeRow.target_id)
             .join(TargetConfigRow, TargetConfigRow.id == ProbeRow.target_config_id)
             .join(RequestPayloadRow, RequestPayloadRow.id == ProbeRow.request_payload_id)
             .outerjoin(original, original.id == ProbeRow.replay_of))
    found = {}
    dictionaries = blobs.Dictionaries()
    with Session(engine) as session:
        for row in session.execute(query):
            # The blobs' own bytes name a dictionary of their database: what must survive is
            # what they decode to.
            record = {c.key: getattr(row, c.key) for c in PROBE_FIELDS
                      if c.key not in ("id", "target_id", "target_config_id",
                                       "request_payload_id", "replay_of",
                                       "response_headers_zlib", "raw_response_zlib")}
            record.update(target=row.name, target_created_at=row.created_at,
                          config_hash=row.config_hash, config=row.config,
                          config_first_seen_at=row.first_seen_at, payload_sha256=row.sha256,
                          payload=row.payload, replay_of_uid=row.original_uid,
                          body=blobs.body(session.connection(), row, dictionaries),
                          headers=blobs.headers(session.connection(), row, dictionaries))
            found[row.uid] = record
    return found


def test_export_then_import_reproduces_every_column(
    sim: SimClient, sim_server: Any, make_settings: MakeSettings, engine: Engine, other_url: str
) -> None:
    a_varied_history(sim, make_settings, engine, sim_server.url)
    out = io.StringIO()
    assert transfer.export(engine, out) == 7

    other = db.open_store(other_url)
    try:
        summary = transfer.import_lines(other, io.StringIO(out.getvalue()), "export.jsonl")
        assert summary == transfer.ImportSummary(probes=7, inserted=7, skipped=0, unlinked=0)
        before, after = snapshot(engine), snapshot(other)
        assert after.keys() == before.keys()
        for uid, record in before.items():
            assert after[uid] == record, uid
        assert any(r["body"] == b"\xff\x00\xfe" for r in after.values())
        assert sum(r["replay_of_uid"] is not None for r in after.values()) == 1

        again = transfer.import_lines(other, io.StringIO(out.getvalue()), "export.jsonl")
        assert again == transfer.ImportSummary(probes=7, inserted=0, skipped=7, unlinked=0)
        assert snapshot(other) == after
    finally:
        other.dispose()


def test_export_selects_by_target_and_time(
    sim: SimClient, sim_server: Any, make_settings: MakeSettings, engine: Engine
) -> None:
    a_varied_history(sim, make_settings, engine, sim_server.url)
    now = datetime.now(UTC)

    def kinds(**selection: Any) -> list[str]:
        out = io.StringIO()
        transfer.export(engine, out, **selection)
        return [json.loads(line)["kind"] for line in out.getvalue().splitlines()]

    azure = kinds(target="azure")
    assert azure == ["monitor-export", "target", "config", "payload", "probe"]
    assert kinds(since=now + timedelta(minutes=1)) == ["monitor-export"]
    assert kinds(until=now - timedelta(hours=1)) == ["monitor-export"]
    assert kinds().count("probe") == 7


def test_a_replay_whose_original_stays_behind_is_imported_without_its_link(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, other_url: str
) -> None:
    settings = make_settings({"name": "canary"}, {"name": "pinned", "model": "gpt-4o-mini"})
    [original] = store_probes(engine, target(settings, "canary"))
    replay_probe(engine, settings, original, to="pinned")
    out = io.StringIO()
    transfer.export(engine, out, target="pinned")

    other = db.open_store(other_url)
    try:
        summary = transfer.import_lines(other, io.StringIO(out.getvalue()), "pinned.jsonl")
        assert summary.inserted == 1 and summary.unlinked == 1
        [record] = snapshot(other).values()
        assert record["replay_of_uid"] is None
    finally:
        other.dispose()


@pytest.mark.parametrize(("lines", "message"), [
    pytest.param(['{"kind": "probe"}'], "f.jsonl:1: expected a monitor-export header line first",
                 id="no-header"),
    pytest.param(['{"kind": "monitor-export", "version": 9}'], "format version 9", id="version"),
    pytest.param(['{"kind": "monitor-export", "version": 1}', "[1]"], "f.jsonl:2: not a JSON",
                 id="not-an-object"),
    pytest.param(['{"kind": "monitor-export", "version": 1}',
                  '{"kind": "payload", "sha256": "00", "payload": {}}'],
                 "f.jsonl:2: payload sha256 00 does not match", id="bad-digest"),
    pytest.param(['{"kind": "monitor-export", "version": 1}',
                  ('{"kind": "config", "target": "ghost", "config_hash": "h", "config": {},'
                   ' "first_seen_at": "2026-01-01T00:00:00+00:00"}')],
                 "refers to target 'ghost'", id="unknown-target"),
    pytest.param(['{"kind": "monitor-export", "version": 1}', '{"kind": "probe", "x": 1}'],
                 "unknown probe fields x", id="unknown-field"),
    pytest.param([], "empty", id="empty"),
])
def test_a_file_that_is_not_an_export_is_refused_with_its_line(
    engine: Engine, lines: list[str], message: str
) -> None:
    with pytest.raises(transfer.TransferError, match=message):
        transfer.import_lines(engine, lines, "f.jsonl")


def test_the_commands_move_probes_between_databases(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, database_url: str,
    other_url: str, tmp_path: Path
) -> None:
    settings = make_settings({"name": "canary"}, database_url=database_url)
    store_probes(engine, settings.targets[0], 3)
    path = tmp_path / "probes.jsonl"
    runner = CliRunner()

    exported = runner.invoke(export_command, ["-c", settings.config_path, "-o", str(path),
                                              "--target", "canary", "--since", "1h"])
    assert exported.exit_code == 0, exported.output
    assert "exported 3 probes" in exported.output

    imported = runner.invoke(import_command, [str(path), "--database", other_url])
    assert imported.exit_code == 0, imported.output
    assert imported.output.strip() == "imported 3 probes, skipped 0 already stored"
    again = runner.invoke(import_command, [str(path), "--database", other_url])
    assert again.output.strip() == "imported 0 probes, skipped 3 already stored"


def a_checked_history(sim: SimClient, make_settings: MakeSettings, engine: Engine) -> None:
    """Two answers that pass one check and fail another, and a failed probe (not applicable)."""
    settings = make_settings({"name": "checked", "checks": [
        {"content_regex": "."}, {"content_equals": "no such answer"}, {"finish_reason": "stop"}]})
    store_probes(engine, target(settings, "checked"), 2)
    sim.enqueue({"fault": "http_503"})
    store_probes(engine, target(settings, "checked"))


def check_rows(engine: Engine) -> set[tuple[Any, ...]]:
    """Every check_results row, with the probe's uid and the target's name for their ids."""
    query = (select(ProbeRow.uid, TargetRow.name, CheckResultRow.check_name,
                    CheckResultRow.outcome, CheckResultRow.reason, CheckResultRow.started_at,
                    CheckResultRow.model, CheckResultRow.system_fingerprint)
             .join(ProbeRow, ProbeRow.id == CheckResultRow.probe_id)
             .join(TargetRow, TargetRow.id == CheckResultRow.target_id))
    with engine.connect() as connection:
        return {tuple(row) for row in connection.execute(query)}


def report_checks(engine: Engine) -> dict[str, Any]:
    now = datetime.now(UTC)
    report = build_report(engine, now - timedelta(hours=1), now + timedelta(minutes=1), None, now)
    return {t["target"]: t["checks"] for t in report["targets"]}


def test_export_then_import_carries_every_check_outcome(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, other_url: str
) -> None:
    a_checked_history(sim, make_settings, engine)
    before = check_rows(engine)
    assert Counter(row[3] for row in before) == {"pass": 4, "fail": 2, "not_applicable": 3}
    assert all(row[4] for row in before if row[3] == "fail")
    out = io.StringIO()
    assert transfer.export(engine, out) == 3

    other = db.open_store(other_url)
    try:
        summary = transfer.import_lines(other, io.StringIO(out.getvalue()), "export.jsonl")
        assert summary.inserted == 3
        assert check_rows(other) == before
        assert report_checks(other) == report_checks(engine)
        assert report_checks(other)["checked"]

        again = transfer.import_lines(other, io.StringIO(out.getvalue()), "export.jsonl")
        assert again.skipped == 3
        assert check_rows(other) == before
    finally:
        other.dispose()


def test_an_export_from_before_checks_were_exported_imports_without_outcomes(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, other_url: str
) -> None:
    a_checked_history(sim, make_settings, engine)
    out = io.StringIO()
    transfer.export(engine, out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    for record in records:
        record.pop("checks", None)

    other = db.open_store(other_url)
    try:
        summary = transfer.import_lines(other, [json.dumps(r) for r in records], "old.jsonl")
        assert summary.inserted == 3
        assert snapshot(other) == snapshot(engine)
        assert check_rows(other) == set()
    finally:
        other.dispose()


def export_with_one_probe_changed(engine: Engine, change: Callable[[dict[str, Any]], object]
                                  ) -> tuple[list[str], int]:
    """The export's lines with `change` made to its first probe record, and that line's
    number (from 1)."""
    out = io.StringIO()
    transfer.export(engine, out)
    lines = out.getvalue().splitlines()
    number, probe_line = next((n, line) for n, line in enumerate(lines, start=1)
                              if json.loads(line)["kind"] == "probe")
    record = json.loads(probe_line)
    change(record)
    lines[number - 1] = json.dumps(record)
    return lines, number


def test_a_check_that_cannot_be_stored_is_refused_with_its_line(
    sim: SimClient, make_settings: MakeSettings, engine: Engine
) -> None:
    a_checked_history(sim, make_settings, engine)
    lines, number = export_with_one_probe_changed(
        engine, lambda record: record["checks"][0].update(outcome="maybe"))
    with pytest.raises(transfer.TransferError, match=f"f.jsonl:{number}: unreadable probe"):
        transfer.import_lines(engine, lines, "f.jsonl")


def test_a_probe_uid_that_is_not_a_uuid_is_refused_with_its_line(
    sim: SimClient, make_settings: MakeSettings, engine: Engine
) -> None:
    """Probe uids are stored as the 16 bytes of their hex (models.HexUuid)."""
    a_checked_history(sim, make_settings, engine)
    lines, number = export_with_one_probe_changed(
        engine, lambda record: record.update(uid="probe-1"))
    with pytest.raises(transfer.TransferError,
                       match=f"f.jsonl:{number}: probe uid 'probe-1': expected 32 hex digits"):
        transfer.import_lines(engine, lines, "f.jsonl")
