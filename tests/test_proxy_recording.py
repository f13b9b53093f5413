"""The recording half of `monitor proxy`: real calls to the simulator, as the forwarder hands
them over (tests/traffic.py), stored in real SQLite and PostgreSQL databases."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import socket
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import Engine, LargeBinary, String, Text, func, select

from monitor.cli.replay import replay_command
from monitor.domain import DetectionThresholds, Provider
from monitor.health import build_report, metrics_snapshot
from monitor.probe.headers import is_sensitive
from monitor.proxy.exchange import Route
from monitor.proxy.recorder import TrafficRecorder, make_recording_sink
from monitor.proxy.server import Proxy as ForwardingProxy
from monitor.render import render_html, render_table
from monitor.render.dashboard import render_dashboard
from monitor.render.metrics import exposition_registry, render_metrics
from monitor.sim import SimClient, Simulator
from monitor.store import blobs, codec, db, rollups
from monitor.store.models import (
    PROBE_FIELDS,
    PROBES_WITH_ANSWERS,
    PROBES_WITH_FACETS,
    AlertRow,
    Base,
    HourlyRollupRow,
    ProbeFacetRow,
    ProbeRow,
    RequestPayloadRow,
    TargetKind,
    TargetRow,
)
from monitor.store.records import count_targets, last_probes
from monitor.store.schema import float32
from monitor.store.spool import Spool
from tests.conftest import TEST_KEY
from tests.proxy import Proxy
from tests.traffic import call, chat, openai_route
from tests.waiting import wait_until

MakeRecorder = Callable[..., TrafficRecorder]


@pytest.fixture
def make_recorder(tmp_path: Path) -> Iterator[MakeRecorder]:
    made: list[TrafficRecorder] = []

    def make(engine: Engine, *routes: Any, **options: Any) -> TrafficRecorder:
        options.setdefault("maintenance_s", None)
        recorder = TrafficRecorder(engine, Spool(tmp_path / "traffic-spool.jsonl"), routes,
                                   **options)
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        recorder.close(5)


def stored(engine: Engine, count: int) -> list[ProbeRow]:
    """The traffic probes once `count` of them are stored, oldest first."""
    def read() -> list[ProbeRow] | None:
        with engine.connect() as connection:
            rows = connection.execute(select(*PROBE_FIELDS).select_from(PROBES_WITH_ANSWERS)
                                      .order_by(ProbeRow.id)).all()
        return list(rows) if len(rows) >= count else None

    return wait_until(read, f"{count} stored traffic probes")


def body_of(engine: Engine, row: ProbeRow) -> bytes:
    """A stored probe's raw body, decoded as every reader decodes it (store/blobs.py)."""
    with engine.connect() as connection:
        return blobs.body(connection, row, blobs.Dictionaries())


def headers_of(engine: Engine, row: ProbeRow) -> dict[str, str]:
    with engine.connect() as connection:
        return blobs.headers(connection, row, blobs.Dictionaries())


def test_calls_are_stored_like_probes_with_every_field(
        engine: Engine, sim_server: Simulator, sim: SimClient,
        make_recorder: MakeRecorder) -> None:
    route = openai_route(sim_server.url)
    recorder = make_recorder(engine, route)
    exchanges = [
        chat(route, key=TEST_KEY),
        chat(route, key=TEST_KEY),  # the same request: one stored payload
        chat(route, stream=True, stream_options={"include_usage": True}, key=TEST_KEY),
        chat(route, model="sim-500", key=TEST_KEY),
        call(route, "GET", "/v1/models", key="sk-another-key"),
    ]
    for exchange in exchanges:
        recorder.submit(exchange)
    rows = stored(engine, len(exchanges))
    plain, again, streamed, failed, models = rows

    with engine.connect() as connection:
        targets = dict(connection.execute(select(TargetRow.name, TargetRow.kind)).all())
        payloads = connection.execute(select(func.count(RequestPayloadRow.id))).scalar_one()
    assert targets == {"openai/gpt-4o": TargetKind.TRAFFIC, "openai/sim-500": TargetKind.TRAFFIC,
                       "openai/-": TargetKind.TRAFFIC}
    assert payloads == 4  # plain twice, stream, sim-500, and the empty GET

    assert plain.ok and again.ok and streamed.ok
    # Compressed as a canary's: against the dictionary of the route/model's configuration.
    assert bytes(plain.raw_response_zlib)[0] == bytes(again.raw_response_zlib)[0] == 2
    for row, exchange in zip(rows, exchanges):
        # The answer and its headers as the app received them.
        assert body_of(engine, row) == exchange.response_body
        # Its headers too, but those that carry credentials or sessions (redacted as a probe's).
        headers = headers_of(engine, row)
        assert headers == {name: "[redacted]" if is_sensitive(name) else value
                           for name, value in exchange.response_headers.items()}
        assert row.http_status == exchange.status
        assert row.started_at == exchange.started_at
        # Measured values as float32 holds them (schema.Float32).
        assert row.total_ms == float32(exchange.upstream_total_ms)
        assert row.time_to_headers_ms == float32(exchange.time_to_headers_ms)
        assert row.proxy_added_ms == float32(exchange.proxy_added_ms)
        assert row.request_truncated is False and row.response_truncated is False
    key_hash = hashlib.sha256(TEST_KEY.encode()).hexdigest()
    assert [r.credential_hash for r in rows[:4]] == [key_hash] * 4
    assert models.credential_hash == hashlib.sha256(b"sk-another-key").hexdigest()

    # Parsed exactly like a probe.
    body = json.loads(exchanges[0].response_body)
    assert plain.model == body["model"] and plain.system_fingerprint == body["system_fingerprint"]
    assert plain.prompt_tokens == body["usage"]["prompt_tokens"]
    assert plain.completion_tokens == body["usage"]["completion_tokens"]
    assert plain.choices[0]["content"] == body["choices"][0]["message"]["content"]
    assert plain.ratelimit_remaining_requests is not None
    assert plain.request_path is None and plain.stream is False
    assert streamed.stream and streamed.stream_chunks and streamed.completion_tokens
    assert streamed.system_fingerprint == plain.system_fingerprint
    assert streamed.time_to_first_token_ms == float32(exchanges[2].time_to_first_byte_ms)
    assert (failed.ok, failed.error_kind, failed.http_status) == (
        False, "http_server_error", 500)
    assert failed.error_detail.startswith("HTTP 500 Internal Server Error")
    # Other endpoints: stored raw, judged by their status only.
    assert models.ok and models.request_path == "/v1/models" and models.model is None
    assert json.loads(body_of(engine, models))["data"]


def test_no_credential_reaches_the_database(
        engine: Engine, sim_server: Simulator, sim: SimClient,
        make_recorder: MakeRecorder) -> None:
    """Every text and blob column of every table, blobs decompressed, holds no trace of the
    app's key (its hash is all that is kept)."""
    route = openai_route(sim_server.url)
    recorder = make_recorder(engine, route)
    sent = [chat(route, key=TEST_KEY), chat(route, stream=True, key=TEST_KEY),
            chat(route, model="sim-401", key=TEST_KEY),
            call(route, "GET", "/v1/models", key=TEST_KEY)]
    for exchange in sent:
        recorder.submit(exchange)
    stored(engine, len(sent))
    recorder.close(5)
    assert_nowhere_in(engine, TEST_KEY)


def assert_nowhere_in(engine: Engine, secret: str) -> None:
    """`secret` (or all but its first three characters) in no column of any table."""
    seen = 0
    with engine.connect() as connection:
        dictionaries = blobs.Dictionaries()
        for probe_row in connection.execute(ProbeRow.__table__.select()):
            # A probe's raw headers and body through its dictionary and columns.
            for text in (json.dumps(blobs.headers(connection, probe_row, dictionaries)),
                         blobs.body(connection, probe_row, dictionaries).decode(
                             "utf-8", "replace")):
                assert TEST_KEY not in text and TEST_KEY[3:] not in text
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(table.select()):
                for column, value in zip(table.columns, row):
                    if value is None:
                        continue
                    if isinstance(column.type, LargeBinary) or isinstance(
                            value, bytes | memoryview):
                        text = unpacked(column.name, bytes(value)).decode("utf-8", "replace")
                    elif isinstance(column.type, String | Text):
                        text = str(value)
                    else:
                        text = json.dumps(value, default=str)
                    seen += 1
                    assert secret not in text, f"{table.name}.{column.name}"
                    assert secret[3:] not in text, f"{table.name}.{column.name}"
    assert seen > 50


def test_the_openai_sdk_through_the_proxy_is_stored_call_by_call(
        engine: Engine, sim_server: Simulator, make_recorder: MakeRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    """The done-when end to end: the official SDK through the real forwarder, recording on;
    each call stored with what the SDK itself received, and the key nowhere."""
    caplog.set_level(logging.DEBUG)
    route = openai_route(sim_server.url)
    recorder = make_recorder(engine, route)
    proxy = ForwardingProxy((route,), recorder).start()
    try:
        with openai.OpenAI(api_key=TEST_KEY, base_url=f"{proxy.url}/openai/v1",
                           max_retries=0) as client:
            messages: Any = [{"role": "user", "content": "Say OK"}]
            plain = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=messages)
            with client.chat.completions.with_streaming_response.create(
                    model="gpt-4o", messages=messages, stream=True,
                    stream_options={"include_usage": True}) as streaming:
                stream_bytes = b"".join(streaming.iter_bytes())
                stream_request_id = streaming.headers["x-request-id"]
    finally:
        proxy.stop()
    first, second = stored(engine, 2)
    answer = plain.parse()
    assert body_of(engine, first) == plain.content
    assert (first.ok, first.stream, first.http_status) == (True, False, 200)
    assert first.x_request_id == plain.headers["x-request-id"]
    assert first.model == answer.model and first.system_fingerprint == answer.system_fingerprint
    assert first.response_id == answer.id
    assert answer.usage is not None
    assert (first.prompt_tokens, first.completion_tokens) == (
        answer.usage.prompt_tokens, answer.usage.completion_tokens)
    assert first.ratelimit_remaining_requests == int(
        plain.headers["x-ratelimit-remaining-requests"])
    assert first.choices[0]["content"] == answer.choices[0].message.content
    assert body_of(engine, second) == stream_bytes
    assert (second.ok, second.stream, second.x_request_id) == (True, True, stream_request_id)
    assert second.completion_tokens and second.stream_chunks
    for row in (first, second):
        assert row.credential_hash == hashlib.sha256(TEST_KEY.encode()).hexdigest()
        assert row.proxy_added_ms is not None and row.proxy_added_ms >= 0
    recorder.close(5)
    assert_nowhere_in(engine, TEST_KEY)
    assert TEST_KEY not in caplog.text and TEST_KEY[3:] not in caplog.text


def unpacked(column: str, data: bytes) -> bytes:
    """A blob's content: bodies and headers (store/codec.py; those against a dictionary are
    decoded with their row above), detector states (plain zlib)."""
    if not column.endswith("_zlib") or not data:
        return data
    if codec.dictionary_id(data) is not None:
        return data
    try:
        return codec.decompress(data)
    except KeyError:
        return zlib.decompress(data)


def test_headers_mode_stores_no_bodies_and_sampling_is_drawn_per_call(
        engine: Engine, sim_server: Simulator, sim: SimClient,
        make_recorder: MakeRecorder) -> None:
    headers_only = openai_route(sim_server.url, name="lean", record="headers")
    sampled = openai_route(sim_server.url, name="some", record="sample:0.5", sample_rate=0.5)
    draws = iter([0.1, 0.9, 0.49, 0.5])  # kept, left out, kept, left out
    recorder = make_recorder(engine, headers_only, sampled, draw=lambda: next(draws))
    recorder.submit(chat(headers_only, key=TEST_KEY))
    for index in range(4):
        recorder.submit(chat(sampled, content=f"call {index}"))
    rows = stored(engine, 3)
    recorder.close(5)
    assert recorder.counts.sampled_out == 2 and recorder.counts.stored == 3
    with engine.connect() as connection:
        names = connection.execute(
            select(TargetRow.name).join(ProbeRow, ProbeRow.target_id == TargetRow.id)
            .order_by(ProbeRow.id)).scalars().all()
        lean_payload = connection.execute(
            select(RequestPayloadRow.payload).where(
                RequestPayloadRow.id == rows[0].request_payload_id)).scalar_one()
        kept = [json.loads(json.dumps(p))["messages"][0]["content"] for p in connection.execute(
            select(RequestPayloadRow.payload)
            .where(RequestPayloadRow.id.in_([r.request_payload_id for r in rows[1:]]))
            .order_by(RequestPayloadRow.id)).scalars()]
    assert names == ["lean/gpt-4o", "some/gpt-4o", "some/gpt-4o"]
    lean = rows[0]
    assert lean.ok and lean.model and lean.system_fingerprint and lean.completion_tokens
    assert body_of(engine, lean) == b"" and lean.choices is None
    assert lean_payload == {"model": "gpt-4o"}
    assert kept == ["call 0", "call 2"]


def test_a_fingerprint_change_is_raised_from_traffic_alone(
        engine: Engine, sim_server: Simulator, sim: SimClient,
        make_recorder: MakeRecorder) -> None:
    """No canary configured: the upstream's new fingerprint, seen in the app's calls, opens a
    fingerprint alert on the route's traffic target."""
    route = openai_route(sim_server.url)
    thresholds = DetectionThresholds(warmup_probes=5, fingerprint_warmup_probes=5)
    recorder = make_recorder(engine, route, thresholds=thresholds)
    for index in range(6):
        recorder.submit(chat(route, content=f"question {index}"))
    stored(engine, 6)
    sim.update(fingerprints=[{"value": "fp_new0000001"}])
    for index in range(2):
        recorder.submit(chat(route, content=f"later question {index}"))

    def alert() -> Any:
        with engine.connect() as connection:
            return connection.execute(
                select(AlertRow.kind, AlertRow.state, AlertRow.explanation, TargetRow.name)
                .join(TargetRow, TargetRow.id == AlertRow.target_id)
                .where(AlertRow.kind == "fingerprint")).first()

    kind, state, explanation, target = wait_until(alert, "a fingerprint alert")
    assert (kind, state, target) == ("fingerprint", "open", "openai/gpt-4o")
    assert "fp_new0000001" in explanation
    # /metrics shows it on the route and model, for alert rules on traffic.
    recorder.close(5)
    rollups.catch_up(engine)
    body, _ = render_metrics(exposition_registry(lambda: metrics_snapshot(engine)),
                             "text/plain")
    [opened] = [line for line in body.decode().splitlines()
                if line.startswith("monitor_traffic_open_alerts{") and line.endswith(" 1.0")]
    assert opened == ('monitor_traffic_open_alerts{kind="fingerprint",model="gpt-4o",'
                      'route="openai",severity="warning"} 1.0')


def test_a_database_outage_never_blocks_a_call_and_every_record_arrives_once(
        postgres_through_proxy: tuple[str, Proxy], sim_server: Simulator, sim: SimClient,
        make_recorder: MakeRecorder) -> None:
    """Calls through the real forwarder while the database is cut all succeed; their records
    wait in the spool and arrive, each once, when it is back."""
    url, cut = postgres_through_proxy
    engine = db.create(url)
    route = openai_route(sim_server.url)
    recorder = make_recorder(engine, route, retry_s=0.05)
    proxy = ForwardingProxy((route,), recorder).start()

    def app_calls(indexes: range) -> None:
        with requests.Session() as session:
            for index in indexes:
                answer = session.post(
                    f"{proxy.url}/openai/v1/chat/completions", timeout=30,
                    headers={"Authorization": f"Bearer {TEST_KEY}"},
                    json={"model": "gpt-4o", "messages": [
                        {"role": "user", "content": f"call {index}"}]})
                assert answer.status_code == 200 and answer.json()["choices"]

    try:
        app_calls(range(10))
        stored(engine, 10)
        cut.cut()
        app_calls(range(10, 30))  # answered: the worker spools while the database is away
        wait_until(lambda: recorder.counts.spooled >= 20, "the outage's records in the spool")
        cut.restore()
        app_calls(range(30, 40))
        stored(engine, 40)
        wait_until(lambda: recorder.spool.empty(), "the spool drained")
        recorder.close(5)
        with engine.connect() as connection:
            count = connection.execute(select(func.count(ProbeRow.id))).scalar_one()
            payloads = connection.execute(select(RequestPayloadRow.payload)).scalars().all()
        assert count == 40
        assert sorted(p["messages"][0]["content"] for p in payloads) == sorted(
            f"call {index}" for index in range(40))
        assert recorder.counts.dropped == 0 and recorder.counts.stored == 40
    finally:
        proxy.stop()
        engine.dispose()


def test_a_full_queue_spools_in_submit_instead_of_waiting(
        engine: Engine, sim_server: Simulator, sim: SimClient, tmp_path: Path) -> None:
    """The worker held up by a locked database, a queue of one: every call that does not fit
    goes to the spool file from submit itself, and all of them are stored once the lock is
    gone, each once."""
    route = openai_route(sim_server.url)
    exchanges = [chat(route, content=f"call {index}") for index in range(12)]
    recorder = TrafficRecorder(engine, Spool(tmp_path / "spool.jsonl"), [route],
                               queue_size=1, retry_s=0.05, maintenance_s=None)
    try:
        with locked(engine):
            recorder.submit(exchanges[0])
            wait_until(recorder._queue.empty, "the worker to take the first call")
            for exchange in exchanges[1:]:
                recorder.submit(exchange)
            assert recorder.counts.overflowed == 10 and recorder.counts.dropped == 0
        stored(engine, 12)
        wait_until(lambda: recorder.spool.empty(), "the spool drained")
    finally:
        recorder.close(5)
    with engine.connect() as connection:
        assert connection.execute(select(func.count(ProbeRow.id))).scalar_one() == 12


@contextlib.contextmanager
def locked(engine: Engine) -> Iterator[None]:
    """No one else writes (nor, on PostgreSQL, reads the payloads) until the block ends."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN EXCLUSIVE")
        else:
            connection.begin()
            connection.exec_driver_sql("LOCK TABLE request_payloads IN ACCESS EXCLUSIVE MODE")
        yield
        connection.rollback()


def test_traffic_stays_out_of_canary_health_and_shows_beside_it(
        engine: Engine, sim_server: Simulator, sim: SimClient, make_recorder: MakeRecorder,
        make_daemon: Callable[..., Any]) -> None:
    """The report's targets, /metrics' per-target series and `monitor status` read the same
    before and after traffic is recorded (even traffic that fails, on the canary's model);
    the traffic shows in its own section and series."""
    daemon = make_daemon(engine, {"name": "canary"})
    daemon.tick(datetime.now(UTC))
    rollups.catch_up(engine)
    since, until = datetime.now(UTC) - timedelta(hours=2), datetime.now(UTC) + timedelta(hours=2)

    def canary_view() -> tuple[Any, ...]:
        report = build_report(engine, since, until, None, until)
        snapshot = metrics_snapshot(engine)
        return report["targets"], snapshot.targets, last_probes(engine), count_targets(engine)

    before = canary_view()
    route = openai_route(sim_server.url)
    recorder = make_recorder(engine, route)
    for exchange in [chat(route, key=TEST_KEY), chat(route, model="sim-500"),
                     chat(route, key=TEST_KEY)]:
        recorder.submit(exchange)
    stored(engine, 4)
    recorder.close(5)
    rollups.catch_up(engine)
    assert canary_view() == before

    report = build_report(engine, since, until, None, until)
    [model_row, failing] = report["traffic"]
    assert (model_row["target"], model_row["calls"], model_row["ok"]) == ("openai/gpt-4o", 2, 2)
    assert model_row["credentials"] == 1 and model_row["proxy_added_ms_p50"] == 0.25
    assert model_row["fingerprints"][0]["fingerprint"] == "fp_6ec83003ad"
    assert (failing["model"], failing["error_rate"], failing["errors"]) == (
        "sim-500", 1.0, {"http_server_error": 1})
    assert "openai" in render_table(report) and 'id="traffic"' in render_html(report)
    dashboard = render_dashboard(report, [], since="2h", targets=None, refresh_s=60)
    assert 'id="traffic"' in dashboard and "sim-500" in dashboard
    body, _ = render_metrics(exposition_registry(lambda: metrics_snapshot(engine)),
                             "text/plain")
    text = body.decode()
    assert 'monitor_traffic_calls_total{model="gpt-4o",outcome="ok",route="openai"} 2.0' in text
    assert ('monitor_traffic_calls_total{model="sim-500",outcome="http_server_error",'
            'route="openai"} 1.0') in text


def test_monitor_replay_resends_a_recorded_call_and_shows_the_diff(
        engine: Engine, database_url: str, sim_server: Simulator, sim: SimClient,
        make_recorder: MakeRecorder, make_settings: Callable[..., Any]) -> None:
    """The proxy kept no key, so the recorded request goes to the configured target of its
    model; the upstream has moved to a new fingerprint since, which the diff marks."""
    route = openai_route(sim_server.url)
    recorder = make_recorder(engine, route)
    recorder.submit(chat(route, key=TEST_KEY, content="What is 2+2?"))
    [original] = stored(engine, 1)
    settings = make_settings({"name": "canary"}, database_url=database_url)
    sim.update(fingerprints=[{"value": "fp_new0000001"}])

    result = CliRunner().invoke(replay_command, [str(original.id), "-c", settings.config_path])

    assert result.exit_code == 0, result.output
    assert f"replay of probe #{original.id} (target openai/gpt-4o" in result.output
    assert "to canary" in result.output
    fingerprint_line = next(line for line in result.output.splitlines() if "fingerprint" in line)
    assert fingerprint_line.startswith("*") and "fp_new0000001" in fingerprint_line
    with engine.connect() as connection:
        replayed = connection.execute(
            select(ProbeRow.replay_of, TargetRow.name)
            .join(TargetRow, TargetRow.id == ProbeRow.target_id)
            .where(ProbeRow.replay_of.is_not(None))).one()
    assert tuple(replayed) == (original.id, "canary")


def test_batch_replay_sends_a_sample_of_a_routes_traffic_to_a_candidate(
        engine: Engine, database_url: str, sim_server: Simulator, sim: SimClient,
        make_recorder: MakeRecorder, make_settings: Callable[..., Any]) -> None:
    route = openai_route(sim_server.url)
    recorder = make_recorder(engine, route)
    for index in range(6):
        recorder.submit(chat(route, content=f"question {index}"))
    recorder.submit(call(route, "GET", "/v1/models"))  # not chat: never re-sent
    originals = stored(engine, 7)
    settings = make_settings({"name": "candidate", "model": "gpt-4o-mini"},
                             database_url=database_url)

    result = CliRunner().invoke(replay_command, [
        "--target", "openai/gpt-4o", "--since", "1h", "--to", "candidate", "--sample", "3",
        "--json", "-c", settings.config_path])

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["items"], summary["done"], summary["failed"]) == (3, 3, 0)
    with engine.connect() as connection:
        sent = connection.execute(
            select(ProbeRow.replay_of, ProbeFacetRow.model).select_from(PROBES_WITH_FACETS)
            .where(ProbeRow.replay_of.is_not(None))
            .order_by(ProbeRow.replay_of)).all()
    # Spread over the range: the 1st, 3rd and 5th of the six calls, sent to the candidate.
    assert [r.replay_of for r in sent] == [originals[i].id for i in (0, 2, 4)]
    assert {r.model for r in sent} == {"gpt-4o-mini-2024-07-18"}  # the alias, as answered


def test_anthropic_messages_are_parsed_like_an_anthropic_probe(
        engine: Engine, sim_server: Simulator, sim: SimClient,
        make_recorder: MakeRecorder) -> None:
    route = Route("claude", Provider.ANTHROPIC, sim_server.url)
    recorder = make_recorder(engine, route)
    body = {"model": "claude-sonnet-4-0", "max_tokens": 16,
            "messages": [{"role": "user", "content": "Say OK"}]}
    version = {"anthropic-version": "2023-06-01"}
    sent = [call(route, "POST", "/v1/messages", body, key=TEST_KEY, headers=version),
            call(route, "POST", "/v1/messages", {**body, "stream": True}, key=TEST_KEY,
                 headers=version)]
    for exchange in sent:
        recorder.submit(exchange)
    plain, streamed = stored(engine, 2)
    answer = json.loads(sent[0].response_body)
    assert plain.ok and plain.model == answer["model"] and plain.response_id == answer["id"]
    assert plain.prompt_tokens == answer["usage"]["input_tokens"]
    assert plain.completion_tokens == answer["usage"]["output_tokens"]
    assert plain.ratelimit_limit_input_tokens is not None  # anthropic-ratelimit-* headers
    assert streamed.ok and streamed.stream and streamed.completion_tokens
    assert streamed.choices[0]["content"] == plain.choices[0]["content"]


def test_failures_and_cut_bodies_are_recorded_with_their_flags(
        engine: Engine, sim_server: Simulator, sim: SimClient,
        make_recorder: MakeRecorder) -> None:
    """An upstream that cannot be reached, a body cut at the route's cap (forwarded whole,
    stored cut and flagged, and not a failure for that), a 429 and the app's own 400."""
    route = openai_route(sim_server.url, max_body_bytes=120)
    recorder = make_recorder(engine, route)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    sent = [call(route, "POST", "/v1/chat/completions",
                 {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
                 upstream=f"http://127.0.0.1:{port}"),
            chat(route, content="x" * 200),
            chat(route, model="sim-429"),
            chat(route, model="sim-400")]
    for exchange in sent:
        recorder.submit(exchange)
    unreachable, cut, limited, refused = stored(engine, 4)
    assert (unreachable.ok, unreachable.error_kind, unreachable.http_status) == (
        False, "connection_refused", None)
    assert cut.ok and cut.request_truncated and cut.response_truncated
    assert body_of(engine, cut) == sent[1].response_body
    assert len(sent[1].response_body) == 120
    assert (limited.error_kind, limited.http_status) == ("rate_limited", 429)
    assert (refused.error_kind, refused.http_status) == ("http_client_error", 400)
    with engine.connect() as connection:
        payload = connection.execute(select(RequestPayloadRow.payload).where(
            RequestPayloadRow.id == cut.request_payload_id)).scalar_one()
    assert base64.b64decode(payload["body_base64"]) == sent[1].request_body


def test_availability_on_traffic_ignores_the_apps_own_bad_requests(
        engine: Engine, sim_server: Simulator, sim: SimClient,
        make_recorder: MakeRecorder) -> None:
    """Four 400s in a row (the app's mistakes) open nothing; three 503s from the upstream do."""
    route = openai_route(sim_server.url)
    thresholds = DetectionThresholds(warmup_probes=1, availability_consecutive_failures=3)
    recorder = make_recorder(engine, route, thresholds=thresholds)
    recorder.submit(chat(route, model="sim-503"))  # the target's first call: its baseline
    for _ in range(4):
        recorder.submit(chat(route, model="sim-503", content="bad", n="not a number"))
    assert [r.http_status for r in stored(engine, 5)] == [503, 400, 400, 400, 400]
    recorder.close(5)
    recorder = make_recorder(engine, route, thresholds=thresholds)

    def availability() -> list[str]:
        with engine.connect() as connection:
            return list(connection.execute(select(AlertRow.key).where(
                AlertRow.kind == "availability")).scalars())

    assert availability() == []
    for _ in range(3):
        recorder.submit(chat(route, model="sim-503"))
    assert wait_until(availability, "an availability alert") == ["consecutive_failures"]


def test_make_recording_sink_records_to_the_configured_database(
        database_url: str, sim_server: Simulator, sim: SimClient, tmp_path: Path,
        make_settings: Callable[..., Any]) -> None:
    """What `monitor proxy` calls: the configured database, the configured alert policy."""
    settings = make_settings({"name": "canary"}, database_url=database_url)
    route = openai_route(sim_server.url)
    sink = make_recording_sink(settings, [route], spool_path=tmp_path / "proxy-spool.jsonl")
    try:
        sink.submit(chat(route, key=TEST_KEY))
        [row] = stored(sink.engine, 1)
        assert row.credential_hash == hashlib.sha256(TEST_KEY.encode()).hexdigest()
    finally:
        counts = sink.close(5)
        sink.engine.dispose()
    assert (counts.submitted, counts.stored, counts.dropped) == (1, 1, 0)


def test_upkeep_rolls_up_and_prunes_old_raw_bodies_without_a_daemon(
        engine: Engine, sim_server: Simulator, sim: SimClient,
        make_recorder: MakeRecorder) -> None:
    later = datetime.now(UTC) + timedelta(days=2)
    route = openai_route(sim_server.url)
    recorder = make_recorder(engine, route, clock=lambda: later,
                             raw_retention_ms=24 * 3_600_000)
    recorder.submit(chat(route))
    [row] = stored(engine, 1)
    assert body_of(engine, row)
    recorder.maintain()
    with engine.connect() as connection:
        body = connection.execute(select(ProbeRow.raw_response_zlib)).scalar_one()
        hours = connection.execute(select(func.count()).select_from(HourlyRollupRow)).scalar_one()
    assert codec.decompress(body) == b"" and hours == 1
