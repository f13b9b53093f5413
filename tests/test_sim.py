"""The simulator over real loopback HTTP: shapes against the captured OpenAI exchange, every fault as
a client sees it, the control endpoint, rate limits, determinism and the `monitor sim` entry point."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
import requests

from monitor.durations import parse_seconds
from monitor.errors import SimulatorError
from monitor.sim import Scenario, SimClient, Simulator, load_scenario
from monitor.sim.responses import go_duration
from monitor.sim.scenario import Faults
from tests.waiting import Lines, wait_until

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE = json.loads((FIXTURES / "openai-chat-completion.json").read_text())
PONG = [{"role": "user", "content": "Reply with the single word: pong"}]
STORY = [{"role": "user", "content": "Tell me about canaries"}]
NOW = 1_742_566_190.0


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server() -> Iterator[Simulator]:
    with Simulator(seed=42) as sim:
        yield sim


@pytest.fixture
def sim(server: Simulator) -> Simulator:
    server.reset()
    return server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def chat(http: requests.Session, sim: Simulator, **payload: Any) -> requests.Response:
    payload.setdefault("model", "gpt-4o")
    payload.setdefault("messages", PONG)
    timeout = payload.pop("timeout", 5)
    return http.post(f"{sim.url}/v1/chat/completions", json=payload, timeout=timeout)


def azure(http: requests.Session, sim: Simulator, deployment: str = "gpt-4o",
          query: str = "?api-version=2024-10-21", **payload: Any) -> requests.Response:
    payload.setdefault("messages", PONG)
    url = f"{sim.url}/openai/deployments/{deployment}/chat/completions{query}"
    return http.post(url, json=payload, timeout=5)


def sse(text: str) -> list[str]:
    """The data of each event; asserts the `data: ...\\n\\n` framing."""
    assert text.endswith("\n\n")
    blocks = text[:-2].split("\n\n")
    assert all(block.startswith("data: ") for block in blocks), blocks
    return [block.removeprefix("data: ") for block in blocks]


# --- shapes ---------------------------------------------------------------------------------


def test_plain_completion_has_the_shape_of_the_captured_openai_body(
    sim: Simulator, http: requests.Session
) -> None:
    response = chat(http, sim, max_completion_tokens=16, temperature=0, seed=7)
    body = response.json()
    expected = FIXTURE["response_body"]

    assert response.status_code == 200
    assert list(body) == list(expected)  # same keys, same order
    assert re.fullmatch(r"chatcmpl-[A-Za-z0-9]{29}", body["id"])
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-2024-08-06"
    assert body["service_tier"] == "default" and body["system_fingerprint"] == "fp_6ec83003ad"
    choice = body["choices"][0]
    assert list(choice) == list(expected["choices"][0])
    assert choice["message"] == {"role": "assistant", "content": "pong", "refusal": None,
                                 "annotations": []}
    assert choice["logprobs"] is None and choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage.keys() == expected["usage"].keys()
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
    assert usage["completion_tokens_details"] == expected["usage"]["completion_tokens_details"]
    assert usage["completion_tokens"] == 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + 1


def test_prompt_tokens_match_openai_on_the_captured_request(
    sim: Simulator, http: requests.Session
) -> None:
    request = FIXTURE["request"]
    body = chat(http, sim, model=request["model"], messages=request["messages"]).json()
    assert body["usage"]["prompt_tokens"] == FIXTURE["response_body"]["usage"]["prompt_tokens"]


def test_plain_completion_sends_every_openai_header(
    sim: Simulator, http: requests.Session
) -> None:
    response = chat(http, sim)
    headers = response.headers

    assert set(FIXTURE["response_headers"]) <= {name.lower() for name in headers}
    assert headers["content-type"] == "application/json"
    assert headers["openai-version"] == "2020-10-01"
    assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"])
    assert headers["openai-processing-ms"].isdigit()
    assert headers["x-ratelimit-limit-requests"] == "10000"
    assert headers["x-ratelimit-remaining-requests"] == "9999"
    usage = response.json()["usage"]
    assert int(headers["x-ratelimit-remaining-tokens"]) == 30_000_000 - usage["total_tokens"]
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        reset_s = parse_seconds(headers[name])
        assert reset_s is not None and 0 < reset_s <= 60
    for name in ("date", "openai-organization", "openai-project", "cf-ray", "alt-svc"):
        assert headers[name]
    assert headers["server"] == "cloudflare"
    assert headers["access-control-expose-headers"] == "X-Request-ID"
    assert headers["strict-transport-security"].startswith("max-age=")
    assert headers["set-cookie"].startswith("__cf_bm=") and "; path=/;" in headers["set-cookie"]
    assert int(headers["content-length"]) == len(response.content)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        pytest.param(0.12, "120ms", id="millis"),
        pytest.param(0.0, "0s", id="zero"),
        pytest.param(59.88, "59.88s", id="seconds"),
        pytest.param(360.0, "6m0s", id="minutes"),
        pytest.param(3723.5, "1h2m3.5s", id="hours"),
        pytest.param(83909.144, "23h18m29.144s", id="day"),
    ],
)
def test_rate_limit_resets_are_written_like_go_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
    assert parse_seconds(text) == pytest.approx(seconds)


def test_alias_answers_with_its_snapshot_and_can_be_repointed(
    sim: Simulator, http: requests.Session
) -> None:
    assert chat(http, sim, model="gpt-4o").json()["model"] == "gpt-4o-2024-08-06"
    assert chat(http, sim, model="gpt-4o-mini").json()["model"] == "gpt-4o-mini-2024-07-18"
    assert chat(http, sim, model="local-llama").json()["model"] == "local-llama"
    sim.update(aliases={"gpt-4o": "gpt-4o-2024-11-20"})
    assert chat(http, sim, model="gpt-4o").json()["model"] == "gpt-4o-2024-11-20"
    assert chat(http, sim, model="gpt-4o-mini").json()["model"] == "gpt-4o-mini-2024-07-18"


def test_stream_sends_role_content_finish_usage_and_done(
    sim: Simulator, http: requests.Session
) -> None:
    plain = chat(http, sim, messages=STORY, temperature=0).json()
    response = chat(http, sim, messages=STORY, temperature=0, stream=True,
                    stream_options={"include_usage": True})

    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    data = sse(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    for chunk in chunks:
        assert list(chunk)[:6] == ["id", "object", "created", "model", "service_tier",
                                   "system_fingerprint"]
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["id"] == chunks[0]["id"] and chunk["model"] == "gpt-4o-2024-08-06"
    first, *middle, finish, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert all(chunk["usage"] is None for chunk in [first, *middle, finish])
    content = "".join(chunk["choices"][0]["delta"]["content"] for chunk in middle)
    assert content == plain["choices"][0]["message"]["content"]
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                  "finish_reason": "stop"}]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == len(middle)
    assert usage["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]


def test_stream_without_include_usage_has_no_usage_chunk(
    sim: Simulator, http: requests.Session
) -> None:
    response = chat(http, sim, stream=True)
    data = sse(response.text)
    chunks = [json.loads(item) for item in data[:-1]]
    assert data[-1] == "[DONE]"
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("cap", ["max_completion_tokens", "max_tokens"])
def test_token_cap_cuts_the_answer_with_finish_reason_length(
    sim: Simulator, http: requests.Session, cap: str
) -> None:
    body = chat(http, sim, messages=STORY, **{cap: 3}).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert len(body["choices"][0]["message"]["content"].split()) == 3


def test_n_gives_n_choices_that_differ_when_sampling(
    sim: Simulator, http: requests.Session
) -> None:
    body = chat(http, sim, messages=STORY, n=3, temperature=1, seed=1).json()
    contents = [choice["message"]["content"] for choice in body["choices"]]
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    assert len(set(contents)) == 3
    assert body["usage"]["completion_tokens"] == sum(len(c.split()) for c in contents)


def test_azure_route_uses_the_deployment_and_azure_headers(
    sim: Simulator, http: requests.Session
) -> None:
    sim.update(aliases={"gpt-4o-prod": "gpt-4o-2024-11-20"})
    response = azure(http, sim, "gpt-4o-prod")
    body = response.json()

    assert response.status_code == 200
    assert body["model"] == "gpt-4o-2024-11-20"
    assert body["choices"][0]["message"]["content"] == "pong"
    assert body["choices"][0]["content_filter_results"]["hate"] == {"filtered": False,
                                                                   "severity": "safe"}
    assert body["prompt_filter_results"][0]["prompt_index"] == 0
    headers = response.headers
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["apim-request-id"])
    assert headers["x-ms-region"]
    assert headers["x-ratelimit-remaining-requests"] == "9999"
    assert int(headers["x-ratelimit-remaining-tokens"]) > 0
    assert "openai-organization" not in headers and "x-ratelimit-limit-requests" not in headers


def test_azure_stream_starts_with_prompt_filter_results(
    sim: Simulator, http: requests.Session
) -> None:
    data = sse(azure(http, sim, stream=True).text)
    first = json.loads(data[0])
    assert first["choices"] == [] and first["prompt_filter_results"]
    assert json.loads(data[1])["choices"][0]["delta"]["role"] == "assistant"
    assert data[-1] == "[DONE]"


def test_azure_without_api_version_is_not_found(sim: Simulator, http: requests.Session) -> None:
    response = azure(http, sim, query="")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "404", "message": "Resource not found"}}
    assert response.headers["apim-request-id"]


def test_models_lists_aliases_and_snapshots_or_the_restriction(
    sim: Simulator, http: requests.Session
) -> None:
    body = http.get(f"{sim.url}/v1/models", timeout=5).json()
    assert body["object"] == "list"
    ids = [model["id"] for model in body["data"]]
    assert "gpt-4o" in ids and "gpt-4o-2024-08-06" in ids
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])
    sim.update(models=["gpt-4o"])
    assert [m["id"] for m in http.get(f"{sim.url}/v1/models", timeout=5).json()["data"]] == [
        "gpt-4o"]


# --- validation and auth --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        pytest.param(b"{not json", None, None, id="invalid-json"),
        pytest.param(b'{"messages": [{"role": "user", "content": "hi"}]}', None, None,
                     id="missing-model"),
        pytest.param(b'{"model": "gpt-4o"}', "messages", "missing_required_parameter",
                     id="missing-messages"),
        pytest.param(b'{"model": "gpt-4o", "messages": []}', "messages", "empty_array",
                     id="empty-messages"),
        pytest.param(b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], '
                     b'"max_tokens": 5, "max_completion_tokens": 5}', "max_tokens",
                     "invalid_parameter", id="both-caps"),
        pytest.param(b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], '
                     b'"n": "2"}', "n", "invalid_type", id="n-type"),
    ],
)
def test_invalid_requests_get_openai_400s(
    sim: Simulator, http: requests.Session, body: bytes, param: str | None, code: str | None
) -> None:
    response = http.post(f"{sim.url}/v1/chat/completions", data=body, timeout=5,
                         headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert sim.stats()["by_outcome"] == {"invalid_request": 1}


def test_unknown_model_is_404_only_when_models_are_restricted(
    sim: Simulator, http: requests.Session
) -> None:
    assert chat(http, sim, model="no-such-model").status_code == 200
    sim.update(models=["gpt-4o"])
    response = chat(http, sim, model="no-such-model")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert "no-such-model" in response.json()["error"]["message"]
    assert chat(http, sim, model="gpt-4o-2024-08-06").status_code == 200  # the alias's snapshot
    assert azure(http, sim, "other").json()["error"]["code"] == "DeploymentNotFound"


def test_api_keys_are_checked_and_never_echoed(sim: Simulator, http: requests.Session) -> None:
    sim.update(api_keys=["sk-right-key"])
    url = f"{sim.url}/v1/chat/completions"
    payload = {"model": "gpt-4o", "messages": PONG}

    missing = http.post(url, json=payload, timeout=5)
    wrong = http.post(url, json=payload, timeout=5, headers={"authorization": "Bearer sk-wrong-1"})
    right = http.post(url, json=payload, timeout=5, headers={"authorization": "Bearer sk-right-key"})

    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert missing.json()["error"]["code"] == wrong.json()["error"]["code"] == "invalid_api_key"
    assert "sk-wrong" not in wrong.text and "wrong-1" not in wrong.text
    assert sim.scenario()["api_keys"] == ["****"]
    assert azure(http, sim).status_code == 401
    good = http.post(f"{sim.url}/openai/deployments/d/chat/completions?api-version=1",
                     json={"messages": PONG}, headers={"api-key": "sk-right-key"}, timeout=5)
    assert good.status_code == 200


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status", "content_type"),
    [
        pytest.param("sim-500", 500, "application/json", id="500"),
        pytest.param("sim-502", 502, "application/json", id="502"),
        pytest.param("sim-503", 503, "application/json", id="503"),
        pytest.param("sim-html", 502, "text/html", id="html"),
        pytest.param("sim-text", 200, "text/plain; charset=utf-8", id="text"),
    ],
)
def test_status_and_content_type_faults(
    sim: Simulator, http: requests.Session, model: str, status: int, content_type: str
) -> None:
    response = chat(http, sim, model=model)
    assert response.status_code == status
    assert response.headers["content-type"] == content_type
    if content_type == "application/json":
        assert response.json()["error"]["type"] == "server_error"
    if model == "sim-html":
        assert "<h1>502 Bad Gateway</h1>" in response.text


def test_sim_429_is_rate_limited_with_retry_after(sim: Simulator, http: requests.Session) -> None:
    response = chat(http, sim, model="sim-429")
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")


def test_missing_fields_and_invalid_json_bodies(sim: Simulator, http: requests.Session) -> None:
    missing = chat(http, sim, model="sim-missing-fields").json()
    assert "choices" not in missing and missing["usage"]
    broken = chat(http, sim, model="sim-invalid-json")
    assert broken.status_code == 200 and broken.headers["content-type"] == "application/json"
    with pytest.raises(requests.JSONDecodeError):
        broken.json()


def test_huge_body_is_eight_megabytes_of_valid_json(
    sim: Simulator, http: requests.Session
) -> None:
    response = chat(http, sim, model="sim-huge", max_tokens=16)
    assert len(response.content) > 8_000_000
    assert response.json()["choices"][0]["finish_reason"] == "stop"


def test_hang_times_out_the_client(sim: Simulator, http: requests.Session) -> None:
    with pytest.raises(requests.ReadTimeout):
        chat(http, sim, model="sim-hang", timeout=0.2)


def test_reset_is_a_connection_error(sim: Simulator, http: requests.Session) -> None:
    with pytest.raises(requests.ConnectionError) as raised:
        chat(http, sim, model="sim-reset")
    assert "reset" in str(raised.value).lower()


def test_truncated_body_is_shorter_than_content_length(
    sim: Simulator, http: requests.Session
) -> None:
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        chat(http, sim, model="sim-truncated")


def test_truncated_stream_stops_without_finish_or_done(
    sim: Simulator, http: requests.Session
) -> None:
    lines: list[bytes] = []
    payload = {"model": "sim-truncated-stream", "messages": STORY, "stream": True}
    url = f"{sim.url}/v1/chat/completions"
    with (http.post(url, json=payload, stream=True, timeout=5) as response,
          pytest.raises(requests.exceptions.ChunkedEncodingError)):
        lines.extend(response.iter_lines())
    received = b"\n".join(lines)
    assert b'"content"' in received
    assert b"finish_reason\":\"stop" not in received and b"[DONE]" not in received


def test_slow_adds_a_second(sim: Simulator, http: requests.Session) -> None:
    started = time.perf_counter()
    response = chat(http, sim, model="sim-slow")
    assert time.perf_counter() - started >= 1.0
    assert response.headers["openai-processing-ms"] == "1000"


def test_random_faults_follow_the_rate(sim: Simulator, http: requests.Session) -> None:
    sim.update(faults={"rate": 1.0, "kinds": ["http_502"]})
    assert chat(http, sim).status_code == 502
    sim.update(faults={"rate": 0.0})
    assert chat(http, sim).status_code == 200


# --- rate limits ----------------------------------------------------------------------------


def test_request_budget_runs_out_then_refills_with_the_window(http: requests.Session) -> None:
    clock = FakeClock()
    scenario = Scenario.from_dict({"rate_limits": {"requests_per_window": 2, "window_s": 60}})
    with Simulator(scenario, seed=1, clock=clock) as sim:
        first, second, third = (chat(http, sim) for _ in range(3))
        assert [r.status_code for r in (first, second, third)] == [200, 200, 429]
        assert second.headers["x-ratelimit-remaining-requests"] == "0"
        assert third.headers["x-ratelimit-remaining-requests"] == "0"
        assert third.headers["x-ratelimit-reset-requests"] == "1m0s"
        assert third.headers["retry-after"] == "60"
        error = third.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        clock.now += 45.5
        assert chat(http, sim).headers["retry-after"] == "15"
        clock.now += 15
        refilled = chat(http, sim)
        assert refilled.status_code == 200
        assert refilled.headers["x-ratelimit-remaining-requests"] == "1"
        assert sim.stats()["by_outcome"] == {"ok": 3, "rate_limited": 2}


def test_token_budget_runs_out(sim: Simulator, http: requests.Session) -> None:
    sim.update(rate_limits={"tokens_per_window": 20})
    assert chat(http, sim).status_code == 200  # 15 tokens
    response = chat(http, sim)
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "tokens"
    assert response.headers["x-ratelimit-remaining-tokens"] == "5"


# --- latency --------------------------------------------------------------------------------


def test_latency_is_applied_before_the_headers_and_reported(
    sim: Simulator, http: requests.Session
) -> None:
    sim.update(latency={"base_ms": 50})
    chat(http, sim)  # warm the connection
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        response = chat(http, sim)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.headers["openai-processing-ms"] == "50"
    # Never early. The upper bound only catches a delay applied many times over: how little the
    # simulator adds (a Nagle/delayed-ACK stall would add ~40 ms) is bench/probe_overhead.py's
    # question, as a busy machine can add that much on its own.
    assert 50 <= min(timings) < 500, timings


def test_stream_sends_the_headers_before_spending_the_ttft(http: requests.Session) -> None:
    # The headers are in hand while the simulator still holds the first chunk back, so they
    # went out first. The TTFT is long enough that no busy machine makes this a race; stop()
    # wakes the simulator's thread instead of waiting it out.
    scenario = Scenario.from_dict({"latency": {"ttft_ms": 60_000}})
    with Simulator(scenario) as sim:
        payload = {"model": "gpt-4o", "messages": STORY, "max_tokens": 4, "stream": True}
        with http.post(f"{sim.url}/v1/chat/completions", json=payload, stream=True,
                       timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert sim.stats()["in_flight"] == 1


def test_stream_spends_ttft_before_the_first_chunk_and_delays_tokens(
    sim: Simulator, http: requests.Session
) -> None:
    sim.update(latency={"ttft_ms": 100, "per_token_ms": 20})
    payload = {"model": "gpt-4o", "messages": STORY, "max_tokens": 4, "stream": True}
    started = time.perf_counter()
    with http.post(f"{sim.url}/v1/chat/completions", json=payload, stream=True,
                   timeout=5) as response:
        arrivals = [time.perf_counter() - started for line in response.iter_lines() if line]
    assert arrivals[0] >= 0.1
    # Three delays between four content chunks, after the TTFT. (Measured from the start, not
    # between arrivals: a client slow to read the first chunk on a busy machine would shrink
    # the gap without the server having skipped a delay.)
    assert arrivals[-1] >= 0.1 + 3 * 0.02


def test_slow_periods_multiply_latency() -> None:
    clock = FakeClock()
    scenario = Scenario.from_dict({"latency": {"base_ms": 20, "slow_periods": [
        {"start_s": 10, "duration_s": 5, "factor": 3, "every_s": 100}]}})
    with Simulator(scenario, seed=1, clock=clock) as sim, requests.Session() as http:
        processing = []
        for at in (0, 11, 16, 111):
            clock.now = NOW + at
            processing.append(chat(http, sim).headers["openai-processing-ms"])
    assert processing == ["20", "60", "20", "60"]


# --- control endpoint -----------------------------------------------------------------------


def test_control_endpoint_update_enqueue_reset_and_stats(
    sim: Simulator, http: requests.Session
) -> None:
    client = SimClient(f"{sim.url}/v1")
    scenario = client.update(latency={"jitter_ms": 5}, output_variant=1)
    assert scenario["latency"]["jitter_ms"] == 5 and scenario["latency"]["base_ms"] == 0
    assert client.scenario() == scenario

    queued = client.enqueue({"fault": "http_503"}, {"system_fingerprint": "fp_b"},
                            {"latency_ms": 150, "content": "hello there"})
    assert queued == 3
    assert chat(http, sim).status_code == 503
    assert chat(http, sim).json()["system_fingerprint"] == "fp_b"
    started = time.perf_counter()
    third = chat(http, sim).json()
    assert time.perf_counter() - started >= 0.15
    assert third["choices"][0]["message"]["content"] == "hello there"
    assert chat(http, sim).json()["choices"][0]["message"]["content"] == "Pong."  # variant 1
    http.get(f"{sim.url}/v1/models", timeout=5)

    stats = client.stats()
    assert stats["requests"] == 5 and stats["queued_overrides"] == 0
    assert stats["by_path"] == {"/v1/chat/completions": 4, "/v1/models": 1}
    assert stats["by_model"] == {"gpt-4o": 4}
    assert stats["by_outcome"] == {"http_503": 1, "ok": 4}

    client.enqueue({"fault": "reset"})
    client.reset()
    assert client.stats()["requests"] == 0 and client.stats()["queued_overrides"] == 0
    assert client.scenario()["output_variant"] == 0
    assert chat(http, sim).status_code == 200


def test_enqueued_override_for_a_model_waits_for_that_model(
    sim: Simulator, http: requests.Session
) -> None:
    sim.enqueue({"model": "gpt-4o-mini", "fault": "http_500"}, {"snapshot": "gpt-4o-2099-01-01"})
    assert chat(http, sim, model="gpt-4o").json()["model"] == "gpt-4o-2099-01-01"
    assert chat(http, sim, model="gpt-4o").status_code == 200
    assert chat(http, sim, model="gpt-4o-mini").status_code == 500


def test_invalid_changes_are_refused_with_the_key_named(sim: Simulator) -> None:
    client = SimClient(sim.url)
    with pytest.raises(SimulatorError) as raised:
        client.update(latency={"base_ms": "fast"})
    assert str(raised.value) == (
        "POST /_sim/scenario: latency.base_ms: expected a number >= 0, got 'fast'")
    with pytest.raises(SimulatorError, match=r"\[0\]: fault: expected a fault name"):
        client.enqueue({"fault": "explode"})
    with pytest.raises(SimulatorError, match="fingerprints: expected an array of tables"):
        sim.update(fingerprints="fp_a")
    assert client.scenario()["latency"]["base_ms"] == 0


# --- fingerprints and determinism -----------------------------------------------------------


def test_fingerprints_follow_their_weights(sim: Simulator, http: requests.Session) -> None:
    sim.update(fingerprints=[{"value": "fp_a", "weight": 3}, {"value": "fp_b", "weight": 1}])
    seen = Counter(chat(http, sim).json()["system_fingerprint"] for _ in range(200))
    assert set(seen) == {"fp_a", "fp_b"}
    assert 0.65 <= seen["fp_a"] / 200 <= 0.85, seen


def test_fingerprint_rotation_moves_the_weights_along_the_pool(
    sim: Simulator, http: requests.Session
) -> None:
    sim.update(fingerprints=[{"value": "fp_a", "weight": 1}, {"value": "fp_b", "weight": 0}],
               fingerprint_rotation={"every_requests": 2})
    sequence = [chat(http, sim).json()["system_fingerprint"] for _ in range(6)]
    assert sequence == ["fp_a", "fp_a", "fp_b", "fp_b", "fp_a", "fp_a"]


def test_null_fingerprint_is_sent_as_null(sim: Simulator, http: requests.Session) -> None:
    sim.update(fingerprints=[{"value": None}])
    body = chat(http, sim).json()
    assert "system_fingerprint" in body and body["system_fingerprint"] is None


def _sequence(sim: Simulator, http: requests.Session) -> list[bytes]:
    sim.update(latency={"jitter_ms": 30},
               fingerprints=[{"value": "fp_a", "weight": 1}, {"value": "fp_b", "weight": 1}])
    bodies = [
        chat(http, sim).content,
        chat(http, sim, messages=STORY).content,  # temperature defaults to 1: sampled
        chat(http, sim, messages=STORY, stream=True).content,
        chat(http, sim, messages=STORY, n=2, temperature=0.7).content,
    ]
    latencies = [chat(http, sim).headers["openai-processing-ms"] for _ in range(5)]
    return [*bodies, json.dumps(latencies).encode()]


def test_same_seed_and_sequence_give_identical_answers(http: requests.Session) -> None:
    with Simulator(seed=9, clock=FakeClock()) as first:
        one = _sequence(first, http)
    with Simulator(seed=9, clock=FakeClock()) as second:
        two = _sequence(second, http)
    with Simulator(seed=10, clock=FakeClock()) as third:
        other = _sequence(third, http)
    assert one == two
    assert all(a != b for a, b in zip(one[1:4], other[1:4], strict=True))


def test_sampling_without_a_seed_varies_but_seed_and_temperature_zero_do_not(
    sim: Simulator, http: requests.Session
) -> None:
    def content(**params: Any) -> str:
        body = chat(http, sim, messages=STORY, **params).json()
        return str(body["choices"][0]["message"]["content"])

    assert content(temperature=1) != content(temperature=1)
    assert content(temperature=1, seed=5) == content(temperature=1, seed=5)
    assert content(temperature=0) == content(temperature=0)


def test_output_variant_and_hidden_prompt_tokens_drift_the_canary(
    sim: Simulator, http: requests.Session
) -> None:
    before = chat(http, sim).json()
    sim.update(output_variant=3, hidden_system_prompt_tokens=40)
    after = chat(http, sim).json()
    assert before["choices"][0]["message"]["content"] == "pong"
    assert after["choices"][0]["message"]["content"] == "**pong**"
    assert after["usage"]["prompt_tokens"] == before["usage"]["prompt_tokens"] + 40


# --- scenario files -------------------------------------------------------------------------


DOC_SCENARIO = """\
seed = 7
models = ["gpt-4o", "gpt-4o-mini"]     # optional restriction
[aliases]
"gpt-4o" = "gpt-4o-2024-08-06"
[latency]
base_ms = 200
jitter_ms = 40
[[latency.slow_periods]]
start_s = 60
duration_s = 30
factor = 3
[rate_limits]
requests_per_window = 500
tokens_per_window = 30000
window_s = 60
[faults]
rate = 0.0
kinds = ["http_503"]
[[fingerprints]]
value = "fp_6ec83003ad"
weight = 1
"""


def test_documented_scenario_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(DOC_SCENARIO)
    scenario = load_scenario(str(path))
    assert scenario.seed == 7 and scenario.models == ("gpt-4o", "gpt-4o-mini")
    assert scenario.aliases["gpt-4o"] == "gpt-4o-2024-08-06"
    assert scenario.aliases["gpt-4o-mini"] == "gpt-4o-mini-2024-07-18"  # defaults merged under
    assert scenario.latency.slow_periods[0].factor == 3
    assert scenario.rate_limits.tokens_per_window == 30000
    assert scenario.faults.kinds == ("http_503",)
    assert Scenario.from_dict(scenario.to_dict()) == scenario


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('[latency]\nbase_ms = "fast"\n',
                     "latency.base_ms: expected a number >= 0, got 'fast'", id="type"),
        pytest.param("[latency]\nbase = 5\n",
                     "latency.base: expected one of base_ms, jitter_ms, ttft_ms, per_token_ms, "
                     "slow_periods, got an unknown key", id="unknown-key"),
        pytest.param("[faults]\nrate = 1.5\n",
                     "faults.rate: expected a probability between 0 and 1, got 1.5", id="rate"),
        pytest.param('[faults]\nkinds = ["boom"]\n',
                     "faults.kinds[0]: expected a fault name such as 'http_503' or 'hang', "
                     "got 'boom'", id="fault-name"),
        pytest.param("[[fingerprints]]\nvalue = 'fp_a'\nweight = -1\n",
                     "fingerprints[0].weight: expected a number >= 0, got -1", id="weight"),
        pytest.param("[rate_limits]\nwindow_s = 0\n",
                     "rate_limits.window_s: expected a number > 0, got 0", id="window"),
        pytest.param("seed = true\n", "seed: expected an integer, got True", id="seed"),
    ],
)
def test_invalid_scenario_file_names_file_key_expected_and_got(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    with pytest.raises(SimulatorError) as raised:
        load_scenario(str(path))
    assert str(raised.value) == f"{path}: {message}"


def test_unreadable_scenario_files_are_simulator_errors(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    with pytest.raises(SimulatorError, match="cannot read the scenario: No such file"):
        load_scenario(str(path))
    path.write_text("latency = [\n")
    with pytest.raises(SimulatorError, match=f"^{re.escape(str(path))}: not valid TOML: "):
        load_scenario(str(path))


def test_hand_built_scenario_is_validated_on_start() -> None:
    with pytest.raises(SimulatorError, match=r"faults.kinds: expected at least one fault name"):
        Simulator(Scenario(faults=Faults(kinds=())))


# --- the server itself ----------------------------------------------------------------------


def test_stats_count_a_request_in_flight_until_it_ends(sim: Simulator) -> None:
    connection = HTTPConnection(sim.url.removeprefix("http://"), timeout=5)
    body = json.dumps({"model": "sim-hang", "messages": PONG})
    try:
        connection.request("POST", "/v1/chat/completions", body,
                           {"content-type": "application/json"})
        # Control requests never count themselves.
        wait_until(lambda: sim.stats()["in_flight"] == 1, "the hanging request in flight")
        assert SimClient(sim.url).stats()["in_flight"] == 1
    finally:
        connection.close()  # the client hangs up: the hang ends
    wait_until(lambda: sim.stats()["in_flight"] == 0, "the hanging request to end")
    assert sim.stats()["requests"] == 1


def test_keep_alive_serves_several_requests_on_one_connection(sim: Simulator) -> None:
    connection = HTTPConnection(sim.url.removeprefix("http://"), timeout=5)
    body = json.dumps({"model": "gpt-4o", "messages": PONG})
    try:
        sockets = []
        for _ in range(3):
            connection.request("POST", "/v1/chat/completions", body,
                               {"content-type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read())["object"]
            sockets.append(connection.sock)
        assert sockets[0] is not None and sockets.count(sockets[0]) == 3
    finally:
        connection.close()


def test_many_concurrent_connections(sim: Simulator) -> None:
    failures: list[str] = []

    def client() -> None:
        with requests.Session() as session:
            for _ in range(10):
                response = chat(session, sim)
                if response.status_code != 200:
                    failures.append(response.text)

    threads = [threading.Thread(target=client) for _ in range(25)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sim.stats()["by_outcome"] == {"ok": 250}


def test_stop_ends_a_hanging_request_promptly() -> None:
    outcome: list[BaseException] = []
    sim = Simulator().start()

    def hang() -> None:
        with requests.Session() as session:
            try:
                chat(session, sim, model="sim-hang", timeout=30)
            except requests.RequestException as error:
                outcome.append(error)

    thread = threading.Thread(target=hang)
    thread.start()
    wait_until(lambda: sim.stats()["in_flight"], "the hanging request")
    started = time.perf_counter()
    sim.stop()
    thread.join(5)
    # Promptly: not after the 300 s hang, nor after stop()'s 5 s wait for stuck threads.
    assert time.perf_counter() - started < 4
    assert isinstance(outcome[0], requests.ConnectionError)
    with pytest.raises(SimulatorError, match="not running"):
        assert sim.url


def test_serve_announces_its_url_first_and_stops_on_sigterm() -> None:
    code = ("from monitor.sim import serve; "
            "serve('127.0.0.1', 0, None, 3, lambda line: print(line, flush=True))")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        out = Lines(proc.stdout)
        first = out.wait_for("listening on")
        assert out.text().startswith(first)
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+))\n", first)
        assert match and int(match[2]) > 0, first
        with requests.get(f"{match[1]}/v1/models", timeout=5) as response:
            assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert out.close() == first + "stopped\n"


def test_a_server_announces_itself_only_once_a_signal_would_stop_it_gently() -> None:
    """Whoever reads `listening on` may send SIGTERM at once: the handler that stops the
    server must already be in place, not the default one that kills it (seen under load)."""
    from monitor import httpd

    stop = threading.Event()
    handlers: list[object] = []

    def ready() -> None:
        handlers.append(signal.getsignal(signal.SIGTERM))
        stop.set()

    before = signal.getsignal(signal.SIGTERM)
    httpd.serve_until_signal(stop, ready)
    assert handlers and handlers[0] not in (signal.SIG_DFL, before)
    assert signal.getsignal(signal.SIGTERM) == before  # put back afterwards
