"""`monitor report`, `monitor serve`, `monitor run --http` and `monitor prune` from the
command line, over real databases and the simulator."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from monitor.cli import cli
from monitor.sim import SimClient, Simulator
from monitor.store import db
from monitor.store.models import PROBES_WITH_FACETS, ProbeFacetRow, ProbeRow
from tests.conftest import write_config
from tests.proxy import Proxy
from tests.waiting import Lines, wait_until


@pytest.fixture
def probed(tmp_path: Path, sim_server: Simulator, sim: SimClient, database_url: str) -> Path:
    """A config with two targets, probed a few times, one answer hostile."""
    config = write_config(
        tmp_path / "monitor.toml",
        [{"name": name, "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o"} for name in ("alpha", "beta")],
        database_url,
    )
    sim.enqueue({"model": "gpt-4o", "content": "<script>alert(1)</script>"})
    for _ in range(3):
        assert CliRunner().invoke(cli, ["probe", "--config", str(config)]).exit_code == 0
    sim.enqueue({"fault": "http_503"})
    CliRunner().invoke(cli, ["probe", "alpha", "--config", str(config)])
    return config


def report(config: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["report", "--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_report_in_every_format(probed: Path, tmp_path: Path) -> None:
    document = json.loads(report(probed, "--format", "json", "--since", "1h"))
    by_name = {t["target"]: t for t in document["targets"]}
    assert (by_name["alpha"]["probes"], by_name["alpha"]["ok"]) == (4, 3)
    assert by_name["alpha"]["errors"] == {"http_server_error": 1}
    assert (by_name["beta"]["probes"], by_name["beta"]["ok"]) == (3, 3)
    assert by_name["alpha"]["last_error"]["error_kind"] == "http_server_error"

    only = json.loads(report(probed, "--format", "json", "--target", "beta"))
    assert [t["target"] for t in only["targets"]] == ["beta"]

    table = report(probed)
    assert "alpha" in table and "beta" in table and "http_server_error" in table

    rows = list(csv.DictReader(io.StringIO(report(probed, "--format", "csv"))))
    assert {row["target"]: row["probes"] for row in rows} == {"alpha": "4", "beta": "3"}

    out = tmp_path / "report.html"
    written = CliRunner().invoke(cli, ["report", "--config", str(probed), "--format", "html",
                                       "-o", str(out)])
    assert written.exit_code == 0 and written.stdout == ""
    html = out.read_text()
    assert written.stderr == f"wrote {out} (html, {len(html.encode()):,} bytes, 2 targets)\n"
    assert "<svg" in html and "<script>alert(1)</script>" not in html

    # One clock read, rounded up to the second: the range is exactly as long as asked.
    fixed = datetime(2026, 11, 26, 12, 0, 7, 123456, tzinfo=UTC)
    ranged = json.loads(CliRunner().invoke(cli, ["report", "--config", str(probed), "--format",
                                                 "json"], obj=lambda: fixed).output)
    assert (ranged["since"], ranged["until"], ranged["generated_at"]) == (
        "2026-11-25T12:00:08+00:00", "2026-11-26T12:00:08+00:00", "2026-11-26T12:00:08+00:00")


def test_report_refuses_a_range_that_ends_before_it_starts(probed: Path) -> None:
    result = CliRunner().invoke(cli, ["report", "--config", str(probed), "--since", "1h",
                                      "--until", "2h"])
    assert result.exit_code == 2 and "--since" in result.output


def test_prune_empties_old_raw_bodies_and_keeps_the_rest(probed: Path,
                                                          database_url: str) -> None:
    text = probed.read_text() + '\n[retention]\nraw = "1ms"\n'
    probed.write_text(text)
    time.sleep(0.01)  # every probe now older than 1 ms: a minimum, which a busy machine only adds to
    result = CliRunner().invoke(cli, ["prune", "--config", str(probed)])
    assert result.exit_code == 0, result.output
    assert "emptied the raw body and headers of 7 probes" in result.output
    engine = db.open_store(database_url)
    with engine.connect() as connection:
        kept = connection.execute(select(ProbeFacetRow.model, ProbeRow.total_ms).select_from(PROBES_WITH_FACETS)).all()
    engine.dispose()
    assert len(kept) == 7 and all(total is not None for _, total in kept)
    # Reports still come from the rollups.
    assert json.loads(report(probed, "--format", "json"))["targets"][0]["probes"] == 4


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.append(tag)


def test_run_http_serves_the_dashboard_metrics_and_a_healthz_that_follows_the_database(
    tmp_path: Path, sim_server: Simulator, sim: SimClient,
    postgres_through_proxy: tuple[str, Proxy],
) -> None:
    url, proxy = postgres_through_proxy
    config = write_config(
        tmp_path / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1s", "timeout": "1s"}],
        url,
    )
    environ = {**os.environ, "MONITOR_WEB_TOKEN": "test-token-123"}
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(config), "--http",
         "127.0.0.1:0", "--spool", str(tmp_path / "spool.jsonl")],
        stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=environ)
    assert process.stderr is not None
    log = Lines(process.stderr)
    try:
        base = log.wait_for("listening on ").split()[-1]
        auth = {"Authorization": "Bearer test-token-123"}
        log.wait_for("a  ok")  # a probe stored, so the metrics have something to show
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 401

        def probe_metrics() -> set[str]:
            metrics = requests.get(f"{base}/metrics", headers=auth, timeout=10)
            assert metrics.status_code == 200
            names = {family.name for family in text_string_to_metric_families(metrics.text)}
            return names if {"monitor_probe_latency_seconds", "monitor_probes"} <= names else set()

        wait_until(probe_metrics, "the probe metrics")
        page = requests.get(f"{base}/", headers=auth, timeout=10)
        tags = _Tags()
        tags.feed(page.text)
        assert page.status_code == 200 and "svg" in tags.tags
        healthy = requests.get(f"{base}/healthz", timeout=10)
        assert healthy.status_code == 200 and healthy.json()["ok"] is True
        proxy.cut()
        down = requests.get(f"{base}/healthz", timeout=30)
        assert down.status_code == 503
        assert "unreachable" in down.json()["reasons"]["database"]
        proxy.restore()
        assert requests.get(f"{base}/healthz", timeout=30).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        output = log.close()
        assert code == 0, output


def test_serve_prints_where_it_listens_and_answers_the_api(
    tmp_path: Path, probed: Path
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "serve", "--port", "0", "--config", str(probed)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("listening on http://127.0.0.1:")
        base = first.split()[-1]
        document = requests.get(f"{base}/api/report?since=1h", timeout=10).json()
        assert {t["target"] for t in document["targets"]} == {"alpha", "beta"}
        assert requests.get(f"{base}/api/alerts?open=1", timeout=10).json() == []
        # No `monitor run` is alive: the store answers, but nothing is probing.
        health = requests.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 503 and "heartbeat" in health.json()["reasons"]["scheduler"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        if process.stdout is not None:
            process.stdout.close()
