"""`monitor sim --recorded`: stored answers served back byte for byte, on both databases."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, select

from monitor import probe
from monitor.domain import Target
from monitor.probe import providers
from monitor.replay.recorded import RecordedError, RecordedServer
from monitor.sim import SimClient
from monitor.store import blobs
from monitor.store.models import ProbeRow, RequestPayloadRow
from tests.conftest import MakeSettings
from tests.test_replay import store_probes, target
from tests.waiting import Lines

ROOT = Path(__file__).resolve().parents[1]


def stored(engine: Engine, probe_id: int) -> tuple[dict[str, Any], dict[str, str], bytes]:
    """A probe's payload, headers and body as the store holds them."""
    with engine.connect() as connection:
        row = connection.execute(
            select(RequestPayloadRow.payload, ProbeRow.response_headers_zlib,
                   ProbeRow.raw_response_zlib, ProbeRow.x_request_id, ProbeRow.response_id,
                   ProbeRow.response_created_at)
            .join(ProbeRow, ProbeRow.request_payload_id == RequestPayloadRow.id)
            .where(ProbeRow.id == probe_id)).one()
        dictionaries = blobs.Dictionaries()
        return (row.payload, blobs.headers(connection, row, dictionaries),
                blobs.body(connection, row, dictionaries))


def raw_exchange(url: str, path: str, body: bytes) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    """POST over a bare socket: the status line, the headers as sent and the body's HTTP
    chunks as framed (one item for a content-length body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = [(n, v) for n, _, v in (line.partition(": ") for line in lines)]
    if ("transfer-encoding", "chunked") not in headers:
        return status, headers, [rest]
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return status, headers, chunks
        chunks.append(rest[:size])
        rest = rest[size + 2:]


def test_stored_plain_and_streamed_answers_come_back_byte_identical(
    sim: SimClient, make_settings: MakeSettings, engine: Engine
) -> None:
    settings = make_settings({"name": "plain"}, {"name": "streamed", "stream": True})
    [plain] = store_probes(engine, target(settings, "plain"))
    [streamed] = store_probes(engine, target(settings, "streamed"))

    with RecordedServer(engine) as server:
        for probe_id in (plain, streamed):
            payload, headers, body = stored(engine, probe_id)
            status, sent_headers, chunks = raw_exchange(
                server.url, "/v1/chat/completions", json.dumps(payload).encode())

            assert status == "HTTP/1.1 200 OK"
            assert b"".join(chunks) == body
            framing = {"content-length", "transfer-encoding", "connection"}
            assert [(n, v) for n, v in sent_headers if n not in framing] == [
                (n, v) for n, v in headers.items() if n not in framing]
            if probe_id == streamed:  # one HTTP chunk per stored SSE event
                assert len(chunks) > 3
                assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in chunks)
            else:
                assert ("content-length", str(len(body))) in sent_headers


def test_a_probe_of_the_recorded_server_gets_the_recorded_answer(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, make_target: Any
) -> None:
    settings = make_settings({"name": "streamed", "stream": True})
    sim.update(fingerprints=[{"value": "fp_recorded"}])
    [original] = store_probes(engine, settings.targets[0])
    sim.update(fingerprints=[{"value": "fp_live"}])

    with RecordedServer(engine) as server:
        replaying: Target = make_target(name="streamed", stream=True,
                                        base_url=f"{server.url}/v1")
        with providers.new_session() as session:
            result = probe.run(replaying, session)

    assert result.ok, result.error_detail
    assert result.system_fingerprint == "fp_recorded"
    assert result.raw_response == stored(engine, original)[2]


def test_the_newest_successful_answer_is_served(
    sim: SimClient, make_settings: MakeSettings, engine: Engine
) -> None:
    settings = make_settings({"name": "canary"})
    store_probes(engine, settings.targets[0])
    sim.update(fingerprints=[{"value": "fp_second"}])
    [newest_ok] = store_probes(engine, settings.targets[0])
    sim.enqueue({"fault": "http_503"})
    [failed] = store_probes(engine, settings.targets[0])
    payload, _, body = stored(engine, newest_ok)

    with RecordedServer(engine) as server:
        response = requests.post(f"{server.url}/v1/chat/completions", json=payload, timeout=10)

    assert response.status_code == 200
    assert response.content == body and b"fp_second" in body
    assert failed > newest_ok


def test_the_azure_route_is_served_too(
    sim: SimClient, sim_server: Any, make_settings: MakeSettings, engine: Engine
) -> None:
    settings = make_settings({"name": "azure", "provider": "azure", "base_url": sim_server.url,
                              "deployment": "gpt-4o-prod", "api_version": "2024-10-21"},
                             AZURE_OPENAI_API_KEY="azure-key")
    [original] = store_probes(engine, settings.targets[0])
    payload, headers, body = stored(engine, original)

    with RecordedServer(engine, target="azure") as server:
        response = requests.post(
            f"{server.url}/openai/deployments/gpt-4o-prod/chat/completions",
            params={"api-version": "2024-10-21"}, json=payload, timeout=10)

    assert response.status_code == 200 and response.content == body
    assert response.headers["apim-request-id"] == headers["apim-request-id"]


def test_an_unknown_request_gets_a_404_in_openais_error_shape(
    sim: SimClient, make_settings: MakeSettings, engine: Engine
) -> None:
    store_probes(engine, make_settings({"name": "canary"}).targets[0])
    unknown = {"model": "gpt-4o", "messages": [{"role": "user", "content": "never asked"}]}

    with RecordedServer(engine) as server:
        missing = requests.post(f"{server.url}/v1/chat/completions", json=unknown, timeout=10)
        garbled = requests.post(f"{server.url}/v1/chat/completions", data=b"{", timeout=10)
        elsewhere = requests.get(f"{server.url}/v1/models", timeout=10)

    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["code"] == "recording_not_found" and error["type"] == "invalid_request_error"
    assert "No recorded answer to this request" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert garbled.status_code == 400 and garbled.json()["error"]["code"] == "invalid_json"
    assert elsewhere.status_code == 404 and "error" in elsewhere.json()


def test_with_latency_an_answer_takes_as_long_as_it_did(
    sim: SimClient, make_settings: MakeSettings, engine: Engine
) -> None:
    # A second: a replay without latency answers far sooner even on a busy machine.
    sim.update(latency={"base_ms": 1000})
    settings = make_settings({"name": "canary"})
    [original] = store_probes(engine, settings.targets[0])
    payload = stored(engine, original)[0]

    timings = {}
    for latency in (False, True):
        with RecordedServer(engine, latency=latency) as server:
            started = time.perf_counter()
            requests.post(f"{server.url}/v1/chat/completions", json=payload, timeout=10)
            timings[latency] = time.perf_counter() - started

    assert timings[True] >= 1.0 > timings[False]


def test_an_unknown_target_is_refused(sim: SimClient, engine: Engine) -> None:
    with pytest.raises(RecordedError, match="no stored probes of target 'nope'"):
        RecordedServer(engine, target="nope")


def test_the_command_prints_where_it_listens_first_and_stops_on_sigterm(
    sim: SimClient, make_settings: MakeSettings, engine: Engine, database_url: str
) -> None:
    settings = make_settings({"name": "canary"}, database_url=database_url)
    [original] = store_probes(engine, settings.targets[0])
    payload, _, body = stored(engine, original)
    code = ("import sys; from monitor.cli.replay import serve_recorded; "
            "serve_recorded(sys.argv[1], '127.0.0.1', 0, None, False)")
    server = subprocess.Popen([sys.executable, "-c", code, settings.config_path], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert server.stdout is not None and server.stderr is not None
    out, err = Lines(server.stdout), Lines(server.stderr)
    try:
        first = out.wait_for("listening on")
        assert out.text() == first and first.startswith("listening on http://127.0.0.1:")
        url = first.strip().removeprefix("listening on ")
        response = requests.post(f"{url}/v1/chat/completions", json=payload, timeout=10)
        assert response.content == body
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
        printed, errors = out.close(), err.close()
    assert code == 0, errors
    assert printed == first + "stopped\n"


@pytest.mark.parametrize("of_target", [False, True], ids=["any-target", "one-target"])
def test_the_newest_answer_is_found_through_the_index_of_successful_probes(
        engine: Engine, of_target: bool) -> None:
    """The lookup's `ok = true()` matches the partial index's predicate on both databases (each
    planner proves it its own way), so the index is usable; PostgreSQL is kept off a sequential
    scan, which a small table would otherwise get."""
    from monitor.replay.recorded import _NEWEST, _NEWEST_OF_TARGET

    query = (_NEWEST_OF_TARGET if of_target else _NEWEST).params(digest="0" * 64, target=1)
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
        else:
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = connection.exec_driver_sql(f"EXPLAIN {sql}").all()
    described = " ".join(str(row[-1]) for row in plan)
    if of_target and engine.dialect.name == "postgresql":
        # One target's newest: PostgreSQL may walk that target's probes backwards instead
        # (ix_probes_target_id_id is in the query's order too); either way no scan or sort.
        assert ("ix_probes_ok_request_payload_id_id" in described
                or "ix_probes_target_id_id" in described), described
        assert "Sort" not in described and "Seq Scan" not in described, described
    else:
        assert "ix_probes_ok_request_payload_id_id" in described, described
