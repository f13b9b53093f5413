"""Anthropic's Messages API end to end: an `anthropic` target against the simulator, plain and
streamed, stored on SQLite and PostgreSQL with every field; 429 and 529 classified and backed off
as OpenAI's are; the stream parser on what the simulator does not send."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from monitor.domain import ErrorKind, Provider, Target
from monitor.probe import anthropic, providers, run
from monitor.probe.completion import CompletionError
from monitor.sim import SimClient, Simulator
from monitor.sim.anthropic_wire import ORGANIZATION_ID
from monitor.store.models import ProbeRow
from monitor.store.probe_reads import probe_records
from monitor.store.records import Recorder
from monitor.watching import read_states
from tests.conftest import TEST_KEY, MakeSettings

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PROMPT = [{"role": "system", "content": "Be brief."},
          {"role": "user", "content": "Reply with the single word: pong"}]


@pytest.fixture(autouse=True)
def key_in_dotenv(tmp_path: Path) -> None:
    """The key where a user keeps it (make_daemon's config reads no environment)."""
    (tmp_path / ".env").write_text(f"ANTHROPIC_API_KEY={TEST_KEY}\n")


def claude(sim_server: Simulator, **overrides: Any) -> dict[str, Any]:
    return {"name": "claude", "provider": "anthropic", "base_url": sim_server.url,
            "model": "claude-sonnet-4-0", "messages": PROMPT, **overrides}


def target(make_settings: MakeSettings, sim_server: Simulator, **overrides: Any) -> Target:
    return make_settings(claude(sim_server, **overrides)).targets[0]


def stored(engine: Engine, target: Target) -> dict[str, Any]:
    result = run(target, providers.new_session())
    probe_id = Recorder(engine).save(result)
    return probe_records(engine, [probe_id])[0]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_anthropic_probe_stores_every_field(
    sim: SimClient, sim_server: Simulator, engine: Engine, make_settings: MakeSettings,
    stream: bool,
) -> None:
    sim.update(api_keys=[TEST_KEY])  # the simulator checks x-api-key
    record = stored(engine, target(make_settings, sim_server, stream=stream))

    assert record["ok"], record["error_detail"]
    assert record["request_payload"] == {
        "model": "claude-sonnet-4-0", "system": "Be brief.", "messages": PROMPT[1:],
        "temperature": 0, "max_tokens": 16, **({"stream": True} if stream else {})}
    headers = record["response_headers"]
    assert record["x_request_id"] == headers["request-id"] and headers["request-id"].startswith(
        "req_01")
    assert record["openai_organization"] == ORGANIZATION_ID
    for kind in ("requests", "tokens", "input_tokens", "output_tokens"):
        name = kind.replace("_", "-")
        assert record[f"ratelimit_limit_{kind}"] == int(
            headers[f"anthropic-ratelimit-{name}-limit"])
        assert record[f"ratelimit_remaining_{kind}"] == int(
            headers[f"anthropic-ratelimit-{name}-remaining"])
        # The reset is kept as sent (RFC 3339) and stored as seconds after the `date`.
        reset = datetime.fromisoformat(headers[f"anthropic-ratelimit-{name}-reset"])
        sent = datetime.strptime(headers["date"], "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC)
        assert record[f"ratelimit_reset_{kind}_s"] == (reset - sent).total_seconds() > 0
    assert record["response_id"].startswith("msg_01")
    assert record["model"] == "claude-sonnet-4-20250514"  # the alias's dated snapshot
    assert record["system_fingerprint"] is None and record["response_created_at"] is None
    assert record["finish_reason"] == "end_turn"
    assert record["choices"] == [{"index": 0, "finish_reason": "end_turn", "content": "pong"}]
    assert record["prompt_tokens"] > 0 and record["completion_tokens"] == 1
    assert record["total_tokens"] == record["prompt_tokens"] + 1
    assert record["cached_tokens"] == 0 and record["cache_creation_input_tokens"] == 0
    assert record["service_tier"] == "standard"
    if stream:
        assert record["stream_chunks"] == 7  # start, block start, ping, delta, stop, delta, stop
        assert 0 < record["time_to_first_token_ms"] <= record["total_ms"]
        assert record["raw_response"].startswith("event: message_start\n")
    else:
        assert json.loads(record["raw_response"])["type"] == "message"
    assert TEST_KEY not in json.dumps(record)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_tool_use_blocks_are_stored_as_tool_calls(
    sim: SimClient, sim_server: Simulator, engine: Engine, make_settings: MakeSettings,
    stream: bool,
) -> None:
    tools = [{"name": "reply", "description": "Give the answer",
              "input_schema": {"type": "object", "properties": {"answer": {"type": "string"}}}}]
    params = {"tools": tools, "tool_choice": {"type": "tool", "name": "reply"}}
    record = stored(engine, target(make_settings, sim_server, stream=stream, params=params))
    assert record["ok"], record["error_detail"]
    assert record["finish_reason"] == "tool_use"
    [choice] = record["choices"]
    assert choice["content"] is None
    [call] = choice["tool_calls"]
    assert call["name"] == "reply" and call["id"].startswith("toolu_01")
    assert json.loads(call["arguments"]) == {"answer": "pong"}


def test_a_429_is_rate_limited_with_retry_after_and_the_daemon_waits(
    sim: SimClient, sim_server: Simulator, engine: Engine, make_daemon: Any,
) -> None:
    daemon = make_daemon(engine, claude(sim_server, model="sim-429", interval="1s",
                                        timeout="1s"))
    assert daemon.tick(T0) == 1
    [row] = _rows(engine)
    assert row.error_kind == ErrorKind.RATE_LIMITED and row.http_status == 429
    assert row.retry_after_s is not None and row.retry_after_s >= 1
    assert "rate limit" in row.error_detail and f"retry after {row.retry_after_s:g} s" in (
        row.error_detail)
    assert row.ratelimit_remaining_requests == 0
    # As for OpenAI: every slot inside retry-after is skipped, and status says why.
    assert daemon.tick(T0 + timedelta(milliseconds=999)) == 0
    state = read_states(engine, daemon.settings, T0 + timedelta(milliseconds=999))["claude"]
    assert state.backoff_until is not None
    assert daemon.tick(T0 + timedelta(seconds=120)) == 1


def test_a_529_is_a_server_error_and_the_daemon_does_not_back_off(
    sim: SimClient, sim_server: Simulator, engine: Engine, make_daemon: Any,
) -> None:
    daemon = make_daemon(engine, claude(sim_server, model="sim-529", interval="1s",
                                        timeout="1s"))
    assert daemon.tick(T0) == 1
    assert daemon.tick(T0 + timedelta(seconds=1)) == 1  # like a 503: the next slot probes
    rows = _rows(engine)
    assert [r.error_kind for r in rows] == [ErrorKind.HTTP_SERVER_ERROR] * 2
    assert rows[0].http_status == 529
    assert rows[0].error_detail == "HTTP 529 Overloaded: Overloaded"


def test_status_says_which_detectors_do_not_apply_to_anthropic(
    sim: SimClient, sim_server: Simulator, engine: Engine, make_daemon: Any,
) -> None:
    daemon = make_daemon(engine, claude(sim_server), {"name": "gpt"})
    daemon.tick(T0)
    states = read_states(engine, daemon.settings, T0)
    summary = states["claude"].summary(T0)
    assert "fingerprint detector not applicable" in summary
    assert states["claude"].to_json(T0)["not_applicable"][0].startswith("fingerprint")
    assert "not applicable" not in states["gpt"].summary(T0)
    assert "not_applicable" not in states["gpt"].to_json(T0)


@pytest.mark.parametrize(("fault", "kind"), [
    ("sim-truncated-stream", ErrorKind.TRUNCATED_STREAM),
    ("sim-invalid-json", ErrorKind.INVALID_JSON),
    ("sim-missing-fields", ErrorKind.INVALID_RESPONSE),
    ("sim-html", ErrorKind.HTTP_SERVER_ERROR),
])
def test_faults_fail_anthropic_probes_as_they_fail_openai_ones(
    sim: SimClient, make_settings: MakeSettings, sim_server: Simulator, fault: str,
    kind: ErrorKind,
) -> None:
    stream = fault.endswith("stream") or fault == "sim-invalid-json"
    result = run(target(make_settings, sim_server, model=fault, stream=stream),
                 providers.new_session())
    assert result.error_kind == kind, result.error_detail


def _rows(engine: Engine) -> list[ProbeRow]:
    from sqlalchemy.orm import Session
    with Session(engine) as session:
        return list(session.scalars(select(ProbeRow).order_by(ProbeRow.id)))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_anthropic_probes_replay_and_are_served_back_recorded(
    sim: SimClient, sim_server: Simulator, engine: Engine, make_settings: MakeSettings,
    stream: bool,
) -> None:
    from dataclasses import replace

    from monitor.replay.recorded import RecordedServer
    from monitor.replay.send import replay_probe
    from tests.test_replay import store_probes

    settings = make_settings(claude(sim_server, stream=stream))
    [original] = store_probes(engine, settings.targets[0])
    outcome = replay_probe(engine, settings, original)
    [again] = outcome.replays
    assert again.content == outcome.original.content == "pong"
    assert sim.stats()["by_path"]["/v1/messages"] == 2  # sent to Anthropic's route again

    with RecordedServer(engine) as server:  # the stored answer, for the same request
        recorded = run(replace(settings.targets[0], base_url=server.url),
                       providers.new_session())
    assert recorded.ok, recorded.error_detail
    assert recorded.content == "pong" and recorded.model == "claude-sonnet-4-20250514"
    assert sim.stats()["by_path"]["/v1/messages"] == 2  # the simulator was not asked


# --- the parser on what the simulator does not send -----------------------------------------


def _events(*payloads: dict[str, Any]) -> bytes:
    return b"".join(b"event: " + p["type"].encode() + b"\ndata: " + json.dumps(p).encode()
                    + b"\n\n" for p in payloads)


START = {"type": "message_start", "message": {
    "id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 5, "output_tokens": 1,
                                                  "cache_read_input_tokens": 3}}}


def test_an_error_event_mid_stream_fails_with_the_kind_of_its_type() -> None:
    stream = anthropic.MessageStream()
    with pytest.raises(CompletionError) as raised:
        stream.feed(_events(START, {"type": "error", "error": {
            "type": "overloaded_error", "message": "Overloaded"}}))
    assert raised.value.kind is ErrorKind.HTTP_SERVER_ERROR
    assert raised.value.detail == "stream event 2 is an error (overloaded_error): Overloaded"


def test_message_delta_usage_replaces_message_start_usage() -> None:
    stream = anthropic.MessageStream()
    stream.feed(_events(
        START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
         "usage": {"output_tokens": 9}},
    ))
    with pytest.raises(CompletionError) as raised:
        stream.finish()
    assert raised.value.kind is ErrorKind.TRUNCATED_STREAM  # no message_stop yet
    partial = stream.partial()
    assert partial.usage.prompt_tokens == 5 and partial.usage.completion_tokens == 9
    assert partial.usage.cached_tokens == 3 and partial.usage.total_tokens == 17
    assert partial.choices[0].content == "hi"
    assert partial.choices[0].finish_reason == "max_tokens"


@pytest.mark.parametrize(("headers", "expected"), [
    pytest.param({"date": "Thu, 26 Nov 2026 12:00:00 GMT",
                  "anthropic-ratelimit-requests-reset": "2026-11-26T12:00:42Z"}, 42.0, id="utc"),
    pytest.param({"date": "Thu, 26 Nov 2026 12:00:00 GMT",
                  "anthropic-ratelimit-requests-reset": "2026-11-26T13:00:30+01:00"}, 30.0,
                 id="offset"),
    pytest.param({"anthropic-ratelimit-requests-reset": "2026-11-26T12:00:42Z"}, None,
                 id="no-date"),
    pytest.param({"date": "Thu, 26 Nov 2026 12:00:00 GMT",
                  "anthropic-ratelimit-requests-reset": "soon"}, None, id="unreadable"),
])
def test_a_reset_is_seconds_from_the_date_header(headers: dict[str, str],
                                                  expected: float | None) -> None:
    assert anthropic.rate_limits(headers).reset_requests_s == expected


def test_the_key_goes_in_x_api_key_with_the_version_header(
    make_settings: MakeSettings, sim_server: Simulator,
) -> None:
    claude_target = target(make_settings, sim_server)
    assert claude_target.provider is Provider.ANTHROPIC
    assert providers.request_headers(claude_target)["anthropic-version"] == "2023-06-01"
    assert providers.chat_url(claude_target) == f"{sim_server.url}/v1/messages"
