"""The probe end to end: real HTTP over loopback to the simulator, results stored in real
databases and read back."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from monitor import probe
from monitor.daemon.prober import Prober
from monitor.domain import ErrorKind, ProbeResult, Settings, Target
from monitor.probe import providers
from monitor.sim import SimClient
from monitor.store.models import ProbeRow, RequestPayloadRow
from monitor.store.probe_reads import probe_records
from monitor.store.records import Recorder
from tests.receiver import Receiver

MakeTarget = Callable[..., Target]


def run(target: Target) -> ProbeResult:
    with providers.new_session() as session:
        return probe.run(target, session)


def store(engine: Engine, target: Target, result: ProbeResult) -> dict[str, Any]:
    recorder = Recorder(engine)
    recorder.register(target.name, target.config_hash, {"model": target.model})
    probe_id = recorder.save(result)
    return probe_records(engine, [probe_id])[0]


def test_plain_probe_captures_every_field(
    sim: SimClient, make_target: MakeTarget, engine: Engine
) -> None:
    target = make_target(model="gpt-4o")
    result = run(target)

    assert result.ok, result.error_detail
    assert result.http_status == 200
    assert result.model == "gpt-4o-2024-08-06"  # the alias answers with its snapshot
    assert result.system_fingerprint and result.system_fingerprint.startswith("fp_")
    assert result.response_id and result.response_id.startswith("chatcmpl-")
    assert result.service_tier == "default"
    assert result.content == "pong"
    assert result.finish_reason == "stop"
    usage = result.usage
    assert usage.prompt_tokens and usage.completion_tokens == 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.cached_tokens == 0 and usage.reasoning_tokens == 0
    assert usage.accepted_prediction_tokens == 0 and usage.rejected_prediction_tokens == 0
    limits = result.rate_limits
    assert limits.limit_requests and limits.limit_tokens
    assert limits.remaining_requests is not None and limits.remaining_tokens is not None
    assert limits.reset_requests_s is not None and limits.reset_tokens_s is not None
    assert result.openai_version == "2020-10-01"
    assert result.openai_organization
    assert result.x_request_id and result.x_request_id.startswith("req_")
    assert result.openai_processing_ms is not None
    assert result.response_headers["set-cookie"] == "[redacted]"
    assert 0 < result.time_to_headers_ms <= result.total_ms  # type: ignore[operator]
    assert result.time_to_first_token_ms is None  # plain calls have no token timing

    record = store(engine, target, result)
    body = json.loads(result.raw_response)
    assert record["raw_response"].encode() == result.raw_response  # byte for byte
    assert record["model"] == body["model"]
    assert record["system_fingerprint"] == body["system_fingerprint"]
    assert record["response_id"] == body["id"]
    assert record["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert record["ratelimit_remaining_tokens"] == limits.remaining_tokens
    assert record["ratelimit_reset_requests_s"] == pytest.approx(limits.reset_requests_s)
    assert record["response_headers"] == result.response_headers
    assert record["choices"] == [
        {"index": 0, "finish_reason": "stop", "content": "pong"}
    ]
    assert record["request_payload"] == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Reply with the single word: pong"}],
        "temperature": 0,
        "seed": 7,
        "max_tokens": 16,
    }
    assert record["started_at"].endswith("+00:00")


def test_streaming_probe_measures_first_token_and_throughput(
    sim: SimClient, make_target: MakeTarget, engine: Engine
) -> None:
    sim.update(latency={"base_ms": 30, "jitter_ms": 0, "ttft_ms": 30, "per_token_ms": 5})
    target = make_target(model="gpt-4o", stream=True, params={"max_tokens": 40},
                         messages=[{"role": "user", "content": "Tell me about canaries"}])
    result = run(target)

    assert result.ok, result.error_detail
    assert result.stream_chunks and result.stream_chunks > 3
    assert result.content and len(result.content.split()) > 3
    assert result.usage.completion_tokens
    assert result.time_to_first_token_ms is not None
    assert result.time_to_headers_ms <= result.time_to_first_token_ms <= result.total_ms  # type: ignore[operator]
    assert result.output_tokens_per_s and result.output_tokens_per_s > 0
    assert result.raw_response.rstrip().endswith(b"data: [DONE]")

    record = store(engine, target, result)
    assert record["raw_response"].encode() == result.raw_response
    assert record["stream_chunks"] == result.stream_chunks
    assert record["request_payload"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("model", "stream", "kind"),
    [
        pytest.param("sim-500", False, ErrorKind.HTTP_SERVER_ERROR, id="500"),
        pytest.param("sim-502", False, ErrorKind.HTTP_SERVER_ERROR, id="502"),
        pytest.param("sim-503", False, ErrorKind.HTTP_SERVER_ERROR, id="503"),
        pytest.param("sim-429", False, ErrorKind.RATE_LIMITED, id="429"),
        pytest.param("sim-hang", False, ErrorKind.READ_TIMEOUT, id="hang"),
        pytest.param("sim-reset", False, ErrorKind.CONNECTION_RESET, id="reset"),
        pytest.param("sim-invalid-json", False, ErrorKind.INVALID_JSON, id="invalid-json"),
        pytest.param("sim-truncated", False, ErrorKind.TRUNCATED_BODY, id="truncated"),
        pytest.param("sim-truncated-stream", True, ErrorKind.TRUNCATED_STREAM, id="trunc-stream"),
        pytest.param("sim-huge", False, ErrorKind.BODY_TOO_LARGE, id="huge"),
        pytest.param("sim-html", False, ErrorKind.HTTP_SERVER_ERROR, id="html"),
        pytest.param("sim-text", False, ErrorKind.UNEXPECTED_CONTENT_TYPE, id="text"),
        pytest.param("sim-missing-fields", False, ErrorKind.INVALID_RESPONSE, id="missing"),
    ],
)
def test_every_upstream_fault_becomes_a_stored_classified_failure(
    sim: SimClient,
    make_target: MakeTarget,
    engine: Engine,
    model: str,
    stream: bool,
    kind: ErrorKind,
) -> None:
    # Short only where the timeout is the point: an answer held up on a busy machine must not
    # turn the other faults into timeouts.
    timeout = "500ms" if kind is ErrorKind.READ_TIMEOUT else "10s"
    target = make_target(model=model, stream=stream, timeout=timeout, max_response_bytes=65536)
    result = run(target)

    assert not result.ok
    assert result.error_kind is kind, result.error_detail
    assert result.error_detail and "Traceback" not in result.error_detail
    record = store(engine, target, result)
    assert record["ok"] is False
    assert record["error_kind"] == kind.value
    assert record["error_detail"] == result.error_detail
    assert len(result.raw_response) <= 65536


def test_rate_limited_probe_records_retry_after(sim: SimClient, make_target: MakeTarget) -> None:
    result = run(make_target(model="sim-429"))
    assert result.http_status == 429
    assert result.retry_after_s is not None and result.retry_after_s > 0
    assert "retry after" in (result.error_detail or "")


def test_html_error_page_is_described_not_dumped(sim: SimClient, make_target: MakeTarget) -> None:
    result = run(make_target(model="sim-html"))
    assert result.http_status == 502
    assert "HTML" in (result.error_detail or "")
    assert "<" not in (result.error_detail or "")


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused(make_target: MakeTarget, closed_port: int) -> None:
    result = run(make_target(base_url=f"http://127.0.0.1:{closed_port}/v1"))
    assert result.error_kind is ErrorKind.CONNECTION_REFUSED
    assert result.http_status is None and result.total_ms is None


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A listener whose accept queue is full: further SYNs are dropped, so connect times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for filler in fillers:
        filler.close()
    listener.close()


def test_connect_timeout(make_target: MakeTarget, unaccepting_port: int) -> None:
    result = run(make_target(base_url=f"http://127.0.0.1:{unaccepting_port}/v1", timeout="300ms"))
    assert result.error_kind is ErrorKind.CONNECT_TIMEOUT, result.error_detail
    assert result.error_detail == "Connection timed out after 300 ms"


def test_unknown_model_is_a_client_error(sim: SimClient, make_target: MakeTarget) -> None:
    sim.update(models=["gpt-4o"])
    result = run(make_target(model="no-such-model"))
    assert result.error_kind is ErrorKind.HTTP_CLIENT_ERROR
    assert result.http_status == 404
    assert "no-such-model" in (result.error_detail or "")


def test_openai_provider_sends_bearer_key(sim: SimClient, make_target: MakeTarget) -> None:
    sim.update(api_keys=["sk-right"])
    base = {"provider": "openai", "api_key_env": "KEY"}
    assert run(make_target(**base, environ={"KEY": "sk-right"})).ok
    wrong = run(make_target(**base, environ={"KEY": "sk-wrong"}))
    assert wrong.error_kind is ErrorKind.AUTH_ERROR
    assert wrong.http_status == 401


def test_azure_uses_deployment_path_and_api_key_header(
    sim: SimClient, sim_server: Any, make_target: MakeTarget
) -> None:
    sim.update(api_keys=["azure-key-123"])
    target = make_target(
        provider="azure",
        base_url=sim_server.url,
        deployment="gpt-4o-prod",
        api_version="2024-10-21",
        api_key_env="AZ_KEY",
        environ={"AZ_KEY": "azure-key-123"},
    )
    result = run(target)
    assert result.ok, result.error_detail
    assert result.request_url == (
        f"{sim_server.url}/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    )
    assert "apim-request-id" in result.response_headers
    assert "x-ms-region" in result.response_headers
    assert "model" not in result.request_payload  # Azure routes by deployment


def test_identical_requests_are_stored_once(
    sim: SimClient, make_target: MakeTarget, engine: Engine
) -> None:
    target = make_target()
    recorder = Recorder(engine)
    recorder.register(target.name, target.config_hash, {})
    for _ in range(3):
        recorder.save(run(target))
    recorder.save(run(make_target(params={"temperature": 0.5})))
    with engine.connect() as connection:
        assert connection.execute(select(func.count(ProbeRow.id))).scalar() == 4
        assert connection.execute(select(func.count(RequestPayloadRow.id))).scalar() == 2


def test_saving_the_same_probe_twice_keeps_one_row(
    sim: SimClient, make_target: MakeTarget, engine: Engine
) -> None:
    target = make_target()
    result = run(target)
    recorder = Recorder(engine)
    recorder.register(target.name, target.config_hash, {})
    first = recorder.save(result)
    assert Recorder(engine).save(result) == first
    with engine.connect() as connection:
        assert connection.execute(select(func.count(ProbeRow.id))).scalar() == 1


def test_probes_carry_no_cookies_between_calls(sim: SimClient, make_target: MakeTarget) -> None:
    target = make_target()
    with providers.new_session() as session:
        first = probe.run(target, session)
        assert "set-cookie" in first.response_headers  # the simulator sends one, like OpenAI
        probe.run(target, session)
        assert len(session.cookies) == 0


def test_a_one_token_stream_has_no_output_speed(sim: SimClient, make_target: MakeTarget) -> None:
    """Speed is measured after the first token; with one token there is no interval: None,
    which reports show as "-", rather than a made-up 0 tokens/s."""
    result = run(make_target(model="gpt-4o", stream=True))
    assert result.ok and result.usage.completion_tokens == 1
    assert result.time_to_first_token_ms is not None
    assert result.output_tokens_per_s is None


def test_targets_on_one_upstream_share_a_session_and_never_each_others_key(
    make_settings: Callable[..., Settings], engine: Engine
) -> None:
    """Thousands of targets on one provider keep one connection pool, not one each: the
    session they share holds no key or header of theirs, and each request carries its own."""
    with Receiver() as receiver:
        settings = make_settings(
            {"name": "a", "provider": "openai", "base_url": f"{receiver.url}/v1",
             "api_key_env": "KEY_A"},
            {"name": "b", "provider": "azure", "base_url": receiver.url, "deployment": "d",
             "api_version": "2024-10-21", "api_key_env": "KEY_B", "stream": True},
            {"name": "c"},  # on the simulator: another upstream
            KEY_A="sk-key-a", KEY_B="azure-key-b")
        a, b, c = settings.targets
        prober = Prober(Recorder(engine))
        try:
            prober.register(settings.targets)
            shared = prober.session(a)
            assert prober.session(b) is shared and prober.session(c) is not shared
            for _ in range(2):
                assert len(list(prober.probe_all([a, b]))) == 2
            assert shared.auth is None
            assert not {"authorization", "api-key"} & {name.lower() for name in shared.headers}
            assert shared.headers["Accept"] == "*/*"  # requests' default, not a target's
        finally:
            prober.close()
        received = receiver.wait_for(4)
    seen = {(path.split("?")[0], h.get("authorization"), h.get("api-key"), h.get("accept"))
            for h, _, path in received}
    assert seen == {
        ("/v1/chat/completions", "Bearer sk-key-a", None, "application/json"),
        ("/openai/deployments/d/chat/completions", None, "azure-key-b", "text/event-stream"),
    }


def test_probes_go_through_the_environments_proxy_unless_no_proxy_names_the_host(
    sim: SimClient, make_target: MakeTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session looks the environment's proxies up once per upstream (ProbeSession), so
    # each case gets a session of its own, as a daemon started in that environment would.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    target = make_target(model="gpt-4o")
    with providers.new_session() as session:
        through_proxy = [probe.run(target, session) for _ in range(2)]
    assert [r.ok for r in through_proxy] == [False, False]
    assert {r.error_kind for r in through_proxy} <= {ErrorKind.CONNECTION_ERROR,
                                                     ErrorKind.CONNECTION_REFUSED}

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with providers.new_session() as session:
        direct = [probe.run(target, session) for _ in range(2)]
    assert [r.ok for r in direct] == [True, True], direct[0].error_detail
