"""`monitor replay` changes no number: the report (`monitor report`, `/api/report`), /metrics,
`monitor status` and `monitor fingerprints` read the same before and after replays whose answers
differ from every canary's (another fingerprint and model, slower, failing), on both databases.
The report lists the replays in a section of their own."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select

from monitor.cli import cli
from monitor.config import load
from monitor.sim import SimClient, Simulator
from monitor.store.models import ProbeRow, TargetRow
from monitor.web.serving import build_app
from tests.conftest import write_config
from tests.report_fixtures import running
from tests.test_web import get


def invoke(clock: Callable[[], datetime], *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), obj=clock)
    assert result.exit_code == 0, result.output
    return result.output


def api_report(url: str) -> dict[str, Any]:
    answer = get(url, "/api/report?since=1h")
    assert answer.status == 200
    document: dict[str, Any] = json.loads(answer.body)
    return document


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = get(url, "/metrics")
    assert answer.status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.body.decode())
            for s in family.samples}


def without(document: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in keys}


def test_replays_change_no_count_share_or_percentile(
    tmp_path: Path, sim_server: Simulator, sim: SimClient, database_url: str, engine: Engine
) -> None:
    config = str(write_config(
        tmp_path / "monitor.toml",
        [{"name": name, "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o"} for name in ("alpha", "beta")],
        database_url,
    ))
    # The CLI's clock an hour ahead: the report's range then holds the canaries and the
    # replays alike, and is the same range before and after.
    fixed = datetime.now(UTC) + timedelta(hours=1)
    clock = lambda: fixed
    for _ in range(3):
        invoke(clock, "probe", "--config", config)
    sim.enqueue({"fault": "http_503"})
    CliRunner().invoke(cli, ["probe", "alpha", "--config", config])  # exits 1: it failed
    with engine.connect() as connection:
        alpha = connection.execute(
            select(ProbeRow.id).join(TargetRow, TargetRow.id == ProbeRow.target_id)
            .where(TargetRow.name == "alpha", ProbeRow.ok.is_(True))
            .order_by(ProbeRow.id)).scalars().first()
    assert alpha is not None

    def everything() -> dict[str, Any]:
        settings = load(config)
        with running(build_app(engine, None, lambda: settings, clock=clock)) as url:
            api = api_report(url)  # catches rollups up first: /metrics reads their totals
            scraped = metrics(url)
        return {
            "report": json.loads(invoke(clock, "report", "--format", "json", "--config", config)),
            "api": api, "metrics": scraped,
            "status": json.loads(invoke(clock, "status", "--json", "--config", config)),
            "fingerprints": json.loads(invoke(clock, "fingerprints", "--json", "--config",
                                              config)),
        }

    before = everything()
    assert before["report"]["replays"] == [] and before["api"]["replays"] == []
    assert ("monitor_probes_total", (("outcome", "ok"), ("target", "alpha"))) in before["metrics"]

    # Answers unlike any canary's: if a replay were counted, some number would move.
    odd = {"system_fingerprint": "fp_replayed", "snapshot": "gpt-4o-replayed",
           "latency_ms": 700}
    sim.enqueue(odd, odd, {"fault": "http_503"}, odd, *[odd] * 10)
    for args in ([str(alpha), "--repeat", "3"], [str(alpha), "--to", "beta"],
                 ["--target", "alpha", "--since", "2h"]):
        replayed = CliRunner().invoke(cli, ["replay", *args, "--config", config], obj=clock)
        assert replayed.exit_code in (0, 1), replayed.output  # 1: one answer was a 503
    with engine.connect() as connection:
        replays = connection.execute(
            select(ProbeRow.id, ProbeRow.replay_of).where(ProbeRow.replay_of.is_not(None))
            .order_by(ProbeRow.started_at, ProbeRow.id)).all()
    assert len(replays) == 4 + 4  # 3 + 1 single ones, then each of alpha's 4 probes
    after = everything()

    for source in ("report", "api"):
        assert without(after[source], "generated_at", "since", "until", "replays") == without(
            before[source], "generated_at", "since", "until", "replays"), source
        listed = after[source]["replays"]
        assert [(r["probe_id"], r["replay_of"]) for r in listed] == [tuple(r) for r in replays]
        assert {r["target"] for r in listed} == {"alpha", "beta"}
        assert "fp_replayed" in {r["fingerprint"] for r in listed}
        assert any(r["ok"] is False and r["error_kind"] == "http_server_error" for r in listed)
    assert after["metrics"] == before["metrics"]
    assert after["status"]["last_probes"] == before["status"]["last_probes"]
    assert after["fingerprints"] == before["fingerprints"]
    table = invoke(clock, "report", "--config", config)
    assert "replays (8 in the range, not counted above)" in table
