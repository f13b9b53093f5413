"""OpenTelemetry export: real probes against the simulator, through the daemon's hand-off after
a probe is stored, exported by the real SDK over OTLP/HTTP to a loopback collector that decodes
the protobuf (tests/otlp_collector.py). Every value is compared with the stored probe."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import Engine, select

from monitor import config, otel
from monitor.cli import cli
from monitor.daemon import Daemon
from monitor.domain import DriftEvent, DriftKind, ProbeResult, Settings, Severity, Target
from monitor.errors import ConfigError
from monitor.otel.export import DURATION_BUCKETS_S, TOKEN_BUCKETS, ExportFailures, probe_ids
from monitor.sim import Simulator
from monitor.store.models import PROBE_FIELDS, PROBES_WITH_ANSWERS, ProbeRow
from monitor.store.records import Recorder
from monitor.store.schema import float32
from monitor.store.spool import Spool
from tests.conftest import TEST_KEY, toml_value, write_config
from tests.otlp_collector import Collector, Span
from tests.waiting import Lines, wait_until

TOKEN = "otel-secret-7e1d4a6f8e0c5b9a"  # the collector's token; hunted for in the logs
CLIENT = 3  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_CLIENT
ERROR = 2  # Status.STATUS_CODE_ERROR


def settings_with_otel(tmp_path: Path, targets: list[dict[str, Any]], otel_table: dict[str, Any],
                       **environ: str) -> Settings:
    path = write_config(tmp_path / "monitor.toml", targets)
    with path.open("a") as file:
        file.write("\n[otel]\n")
        for key, value in otel_table.items():
            if isinstance(value, dict):  # keys quoted: a header name may need it
                value = "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}"
                                        for k, v in value.items()) + "}"
                file.write(f"{key} = {value}\n")
            else:
                file.write(f"{key} = {toml_value(value)}\n")
    return config.load(str(path), environ=environ)


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as running:
        yield running


@pytest.fixture
def exporting(engine: Engine, tmp_path: Path, collector: Collector, sim_server: Simulator,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    """A daemon whose targets (plain, streamed, failing, Anthropic) are on the simulator and
    whose [otel] points at the collector."""
    monkeypatch.chdir(tmp_path)  # no developer's .env
    openai = {"provider": "openai-compatible", "base_url": f"{sim_server.url}/v1"}
    settings = settings_with_otel(tmp_path, [
        {"name": "plain", **openai, "model": "gpt-4o"},
        {"name": "streamed", **openai, "model": "gpt-4o-mini", "stream": True},
        # The simulator answers the sim-503 model with HTTP 503: a failed probe.
        {"name": "broken", **openai, "model": "sim-503", "detect": {"warmup_probes": 1}},
        {"name": "claude", "provider": "anthropic", "base_url": sim_server.url,
         "model": "claude-sonnet-4-0", "stream": True},
    ], {"endpoint": collector.url, "headers": {"authorization": "env:OTEL_TOKEN"},
        "service_name": "canaries"}, OTEL_TOKEN=f"Bearer {TOKEN}", ANTHROPIC_API_KEY=TEST_KEY)
    telemetry = otel.start(settings)
    assert telemetry is not None
    daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"),
                    telemetry=telemetry)
    daemon.register()
    yield daemon
    daemon.close()
    telemetry.shutdown()


def stored(engine: Engine, uid: str) -> ProbeRow:
    with engine.connect() as connection:
        row: Any = connection.execute(select(*PROBE_FIELDS).select_from(PROBES_WITH_ANSWERS)
                                      .where(ProbeRow.uid == uid)).one()
    return row  # type: ignore[no-any-return]


def ns(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def by_target(spans: list[Span]) -> dict[str, Span]:
    found = {s.attributes["monitor.target"]: s for s in spans if s.name.startswith("chat")}
    assert len(found) == len([s for s in spans if s.name.startswith("chat")]), "one span a probe"
    return found


def test_each_stored_probe_is_one_span_with_the_conventions_attributes(
        exporting: Daemon, engine: Engine, collector: Collector, sim_server: Simulator,
        caplog: pytest.LogCaptureFixture) -> None:
    results = {t.name: exporting.probe_target(t) for t in exporting.settings.targets}
    assert exporting.telemetry is not None and exporting.telemetry.flush(30)
    spans = by_target(collector.wait_for_spans(4))
    assert set(spans) == {"plain", "streamed", "broken", "claude"}
    port = int(sim_server.url.rsplit(":", 1)[1])
    for name, span in spans.items():
        result = results[name]
        assert result is not None
        row = stored(engine, result.uid)
        a = span.attributes
        requested = {"plain": "gpt-4o", "streamed": "gpt-4o-mini", "broken": "sim-503",
                     "claude": "claude-sonnet-4-0"}[name]
        assert span.name == f"chat {requested}"
        assert span.kind == CLIENT
        assert span.scope == "monitor"
        assert span.resource["service.name"] == "canaries"
        # The probe's own times: started_at, and started_at + total_ms (as measured: the row
        # keeps it to float32's precision).
        assert span.start_ns == ns(row.started_at)
        assert span.end_ns == ns(row.started_at) + round(a["monitor.total_ms"] * 1_000_000)
        assert float32(a["monitor.total_ms"]) == row.total_ms
        assert (span.trace_id, span.span_id) == tuple(
            f"{n:0{width}x}" for n, width in zip(probe_ids(row.uid), (32, 16)))
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == ("anthropic" if name == "claude" else "openai")
        assert a["gen_ai.request.model"] == requested
        assert (a["server.address"], a["server.port"]) == ("127.0.0.1", port)
        assert a["monitor.target"] == name and a["monitor.probe.uid"] == row.uid
        assert a["monitor.stream"] is row.stream
        assert a["http.response.status_code"] == row.http_status
        if row.ok:
            assert span.status_code == 0 and "error.type" not in a
            assert a["gen_ai.response.model"] == row.model
            assert a["gen_ai.response.id"] == row.response_id
            assert a["gen_ai.response.finish_reasons"] == [row.finish_reason]
            assert a["gen_ai.usage.output_tokens"] == row.completion_tokens
            cached = (row.cached_tokens or 0) + (row.cache_creation_input_tokens or 0)
            assert a["gen_ai.usage.input_tokens"] == row.prompt_tokens + (
                cached if name == "claude" else 0)
        if row.stream:
            assert float32(a["monitor.time_to_first_token_ms"]) == row.time_to_first_token_ms
            assert a["gen_ai.response.time_to_first_chunk"] == (
                a["monitor.time_to_first_token_ms"] / 1000)
        if name == "claude":  # openai.* belong to OpenAI's flavour of the conventions
            assert not [key for key in a if key.startswith("openai.")]
        elif row.ok:
            assert a["openai.response.system_fingerprint"] == row.system_fingerprint
            assert a.get("openai.response.service_tier") == row.service_tier
    broken = stored(engine, spans["broken"].attributes["monitor.probe.uid"])
    assert spans["broken"].attributes["error.type"] == broken.error_kind == "http_server_error"
    assert spans["broken"].status_code == ERROR
    assert spans["broken"].status_message == broken.error_detail
    assert spans["plain"].attributes["gen_ai.request.temperature"] == 0
    assert spans["plain"].attributes["gen_ai.request.seed"] == 7
    # The headers reached the collector; the token went nowhere else.
    assert {h.get("authorization") for h in collector.headers} == {f"Bearer {TOKEN}"}
    assert TOKEN not in caplog.text and TEST_KEY not in caplog.text


def test_metrics_follow_the_conventions_and_match_the_stored_probes(
        exporting: Daemon, engine: Engine, collector: Collector) -> None:
    results = [exporting.probe_target(t) for t in exporting.settings.targets]
    assert exporting.telemetry is not None and exporting.telemetry.flush(30)
    rows = {r.target_name: stored(engine, r.uid) for r in results if r is not None}
    durations = wait_until(lambda: collector.points_of("gen_ai.client.operation.duration"),
                           "the duration histogram")
    assert {p.attributes["monitor.target"]: (p.count, p.unit) for p in durations} == {
        name: (1, "s") for name in rows}
    for point in durations:
        row = rows[point.attributes["monitor.target"]]
        assert point.sum == pytest.approx(row.total_ms / 1000)
        assert point.bounds == list(DURATION_BUCKETS_S)
        assert point.attributes["gen_ai.operation.name"] == "chat"
        assert point.attributes.get("error.type") == row.error_kind
        assert point.attributes.get("gen_ai.response.model") == row.model
    tokens = {(p.attributes["monitor.target"], p.attributes["gen_ai.token.type"]): p
              for p in collector.points_of("gen_ai.client.token.usage")}
    assert set(tokens) == {(name, kind) for name, row in rows.items() if row.ok
                           for kind in ("input", "output")}
    plain = rows["plain"]
    assert tokens["plain", "input"].sum == plain.prompt_tokens
    assert tokens["plain", "output"].sum == plain.completion_tokens
    assert tokens["plain", "output"].bounds == list(TOKEN_BUCKETS)
    first = {p.attributes["monitor.target"]: p.sum
             for p in collector.points_of("gen_ai.client.operation.time_to_first_chunk")}
    assert first == pytest.approx({"streamed": rows["streamed"].time_to_first_token_ms / 1000,
                                   "claude": rows["claude"].time_to_first_token_ms / 1000})


def slots(daemon: Daemon, target: Target, count: int) -> list[ProbeResult | None]:
    """The target probed in `count` consecutive slots from now (one slot, one probe)."""
    start = datetime.now(UTC)
    return [daemon.probe_target(target, start + timedelta(milliseconds=i * target.interval_ms))
            for i in range(count)]


def test_a_drift_event_is_a_span_event_of_the_probe_that_raised_it(
        exporting: Daemon, collector: Collector) -> None:
    broken = next(t for t in exporting.settings.targets if t.name == "broken")
    uids = [result.uid for result in slots(exporting, broken, 3) if result is not None]
    assert exporting.telemetry is not None and exporting.telemetry.flush(30)
    spans = {s.attributes["monitor.probe.uid"]: s for s in collector.wait_for_spans(3)}
    # Three failures in a row open availability's consecutive_failures at the third probe.
    assert [spans[uid].events for uid in uids[:2]] == [[], []]
    (name, at_ns, event), = spans[uids[2]].events
    assert name == "monitor.drift" and at_ns == spans[uids[2]].end_ns
    assert (event["monitor.drift.kind"], event["monitor.drift.key"]) == (
        "availability", "consecutive_failures")
    assert event["monitor.drift.opened"] is True
    assert event["monitor.drift.probe_uids"][-1] == uids[2]


def test_a_drift_event_folded_late_is_a_child_of_the_earlier_probe_span(
        exporting: Daemon, collector: Collector) -> None:
    """After a database outage, spooled probes are folded with the next live one: an event one
    of them raised becomes a span in that probe's trace, under its span."""
    plain = exporting.settings.targets[0]
    earlier, now = slots(exporting, plain, 2)
    assert earlier is not None and now is not None and exporting.telemetry is not None
    event = DriftEvent(target="plain", kind=DriftKind.MODEL, key="model", opened=True,
                       severity=Severity.WARNING, at=earlier.started_at, before="gpt-4o",
                       after="gpt-4o-2", probe_uids=(earlier.uid,), explanation="model changed")
    exporting.telemetry.record(plain, now, [(earlier.uid, event)])
    assert exporting.telemetry.flush(30)
    spans = collector.wait_for_spans(4)
    drift, = (s for s in spans if s.name == "drift model")
    parent, = (s for s in spans if s.name.startswith("chat")
               and s.attributes["monitor.probe.uid"] == earlier.uid)
    assert (drift.trace_id, drift.parent_span_id) == (parent.trace_id, parent.span_id)
    assert drift.start_ns == parent.start_ns
    assert drift.attributes["monitor.drift.after"] == '"gpt-4o-2"'


def test_failures_are_logged_at_most_once_a_minute_with_their_count(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    failures = ExportFailures("http://127.0.0.1:9", clock=lambda: now[0])
    for _ in range(50):
        failures.failed("traces", "connection refused")
    failures.failed("metrics", "connection refused")
    now[0] += 59.9
    failures.failed("traces")
    lines = [r.getMessage() for r in caplog.records if "OpenTelemetry export" in r.getMessage()]
    assert len(lines) == 1 and "failed 1 time (connection refused)" in lines[0]
    now[0] += 0.1
    failures.failed("traces")
    failures.tell_rest()
    lines = [r.getMessage() for r in caplog.records if "OpenTelemetry export" in r.getMessage()]
    assert [re.search(r"failed (\d+) time", line).group(1) for line in lines] == ["1", "52"]  # type: ignore[union-attr]
    assert failures.snapshot() == {"traces": 52, "metrics": 1}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric_value(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_monitor_run_with_an_unreachable_collector_keeps_probing_and_logs_failures_sparingly(
        tmp_path: Path, sim_server: Simulator) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    database = f"sqlite:///{tmp_path / 'monitor.db'}"
    path = write_config(tmp_path / "monitor.toml", [
        {"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
         "model": "gpt-4o", "interval": "1s", "timeout": "1s"}], database)
    with path.open("a") as file:
        file.write(f'\n[otel]\nendpoint = "{dead}"\ntimeout = "200ms"\n'
                   'headers = { authorization = "env:OTEL_TOKEN" }\n')
    # The SDK's own variables: export a batch every 100 ms, so failures pile up quickly.
    env = {"PATH": "/usr/bin:/bin", "OTEL_TOKEN": f"Bearer {TOKEN}",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "100"}
    upgraded = subprocess.run([sys.executable, "-m", "monitor", "db", "upgrade", "--config",
                               str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              check=False)
    assert upgraded.returncode == 0, upgraded.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(path), "--http",
         "127.0.0.1:0", "--spool", str(tmp_path / "spool.jsonl")],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=tmp_path, env=env)
    assert process.stderr is not None
    err = Lines(process.stderr)
    try:
        url = err.wait_for("listening on").split("listening on ", 1)[1].strip()

        def scrape() -> str:
            with requests.get(f"{url}/metrics", timeout=10) as response:
                return response.text

        # Probes go on, one a second, while exports fail over and over.
        wait_until(lambda: metric_value(scrape(), "monitor_otel_export_failures_total") >= 10
                   and metric_value(scrape(), "monitor_probes_total", 'outcome="ok"') >= 5,
                   lambda: f"10 failed exports and 5 probes; /metrics says:\n{scrape()}",
                   poll_s=0.2)
        text = scrape()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        output = err.close()
    assert code == 0, output
    failed = metric_value(text, "monitor_otel_export_failures_total")
    assert metric_value(text, "monitor_otel_export_failures_total", 'signal="traces"') > 0
    assert metric_value(text, "monitor_otel_export_failures_total", 'signal="metrics"') > 0
    assert metric_value(text, "monitor_slots_skipped_total") == 0  # every slot probed
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is not installed: `apt-get install -y prometheus`"
    checked = subprocess.run([promtool, "check", "metrics"], input=text, check=False,
                             capture_output=True, text=True, timeout=60)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, ""), text
    told = [line for line in output.splitlines() if "OpenTelemetry export to" in line]
    # One line when the first export failed, one with the rest at shutdown: not one per failure.
    assert 1 <= len(told) <= 2 < failed, output
    assert dead in told[0] and "probes are stored as usual" in told[0]
    # The exporters' own lines (one per failed batch and retry) never reach the log.
    assert not [line for line in output.splitlines()
                if "export" in line.lower() and "OpenTelemetry export to" not in line], output
    assert TOKEN not in output


@pytest.mark.parametrize(("table", "key", "expected"), [
    pytest.param({}, "otel.endpoint", "an OTLP/HTTP endpoint", id="no-endpoint"),
    pytest.param({"endpoint": "127.0.0.1:4318"}, "otel.endpoint", "an http(s) base URL",
                 id="no-scheme"),
    pytest.param({"endpoint": "http://h:4318/v1/traces"}, "otel.endpoint",
                 "an http(s) base URL like \"http://127.0.0.1:4318\" (the base", id="signal-path"),
    pytest.param({"endpoint": "http://user:hunter2@host:4318"}, "otel.endpoint",
                 "a URL without user:password@", id="credentials"),
    pytest.param({"endpoint": "http://h:4318", "headers": {"authorization": "env:NOPE"}},
                 "otel.headers.authorization", "environment variable NOPE to be set",
                 id="unset-variable"),
    pytest.param({"endpoint": "http://h:4318", "headers": {"x-key": 42}},
                 "otel.headers.x-key", "a header value on one line", id="not-a-string"),
    pytest.param({"endpoint": "http://h:4318", "headers": {"bad name": "v"}},
                 "otel.headers.bad name", "an HTTP header name", id="header-name"),
    pytest.param({"endpoint": "http://h:4318", "timeout": "2h"}, "otel.timeout",
                 'a duration from "100ms" to "1m"', id="timeout"),
    pytest.param({"endpoint": "http://h:4318", "sampler": 1}, "otel.sampler", "a known key",
                 id="unknown-key"),
])
def test_a_bad_otel_section_names_the_file_the_key_and_what_was_expected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: dict[str, Any], key: str,
        expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        settings_with_otel(tmp_path, [{"name": "a", "provider": "openai-compatible",
                                       "base_url": "http://h/v1", "model": "m"}], table)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'monitor.toml'}: {key}: expected {expected}"), message
    assert "hunter2" not in message


def test_config_check_shows_the_otel_section_with_header_values_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OTEL_TOKEN", f"Bearer {TOKEN}")
    settings_with_otel(tmp_path, [{"name": "a", "provider": "openai-compatible",
                                   "base_url": "http://h/v1", "model": "m"}],
                       {"endpoint": "https://otel.example.com:4318/",
                        "headers": {"authorization": "env:OTEL_TOKEN", "x-tenant": "team-a"}},
                       OTEL_TOKEN=f"Bearer {TOKEN}")
    result = CliRunner().invoke(cli, ["config", "check", "--config",
                                      str(tmp_path / "monitor.toml")])
    out = result.output
    assert result.exit_code == 0, out
    assert "endpoint    https://otel.example.com:4318 (/v1/traces, /v1/metrics)" in out
    assert "header authorization  Bea…9a" in out and TOKEN not in out
    assert "header x-tenant  ****" in out


def test_otel_without_the_extra_says_what_to_install(tmp_path: Path,
                                                     sim_server: Simulator) -> None:
    """As if the packages were absent: a finder refuses every opentelemetry module."""
    path = write_config(tmp_path / "monitor.toml", [
        {"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
         "model": "gpt-4o"}], f"sqlite:///{tmp_path / 'monitor.db'}")
    with path.open("a") as file:
        file.write('\n[otel]\nendpoint = "http://127.0.0.1:4318"\n')
    code = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        f"sys.argv = ['monitor', 'run', '--once', '--config', {str(path)!r}]\n"
        "from monitor.cli import main\n"
        "main()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stderr
    assert (f"{path}: otel: expected the OpenTelemetry packages installed "
            "(pip install 'monitor[otel]'), got opentelemetry") in done.stderr
    assert "Traceback" not in done.stderr


def test_without_an_otel_section_nothing_is_started(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path / "monitor.toml", [{"name": "a", "model": "m"}])
    assert otel.start(config.load(str(path), environ={"OPENAI_API_KEY": "k"})) is None
