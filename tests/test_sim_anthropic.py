"""The simulator's Anthropic answers, checked by the official `anthropic` SDK: its client consumes
them (plain, streamed, errors), and its pydantic types validate every body and event strictly
(the client itself builds responses without validating)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
import requests
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

from monitor.sim import SimClient, Simulator

KEY = "sk-ant-simulated"
EVENTS: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
PROMPT = [{"role": "user", "content": "Reply with the single word: pong"}]
TOOLS = [{"name": "reply", "input_schema": {"type": "object"}}]


@pytest.fixture
def client(sim: SimClient, sim_server: Simulator) -> Iterator[anthropic.Anthropic]:
    sim.update(api_keys=[KEY])
    with anthropic.Anthropic(base_url=sim_server.url, api_key=KEY, max_retries=0) as made:
        yield made


def post(sim_server: Simulator, **body: Any) -> requests.Response:
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    payload = {"model": "claude-sonnet-4-0", "max_tokens": 16, "messages": PROMPT, **body}
    return requests.post(f"{sim_server.url}/v1/messages", json=payload, headers=headers,
                         timeout=10)


def sse(response: requests.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of an SSE body."""
    found = []
    for block in response.text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        found.append((fields["event"], json.loads(fields["data"])))
    return found


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool_use"])
def test_the_sdk_reads_a_plain_message(client: anthropic.Anthropic, tools: bool) -> None:
    extra: dict[str, Any] = {"tools": TOOLS, "tool_choice": {"type": "any"}} if tools else {}
    message = client.messages.create(model="claude-sonnet-4-0", max_tokens=16,
                                      messages=PROMPT, system="Be brief.", **extra)
    assert message.model == "claude-sonnet-4-20250514"
    if tools:
        assert message.stop_reason == "tool_use" and message.content[0].type == "tool_use"
        assert message.content[0].input == {"answer": "pong"}
    else:
        assert message.stop_reason == "end_turn" and message.content[0].type == "text"
        assert message.content[0].text == "pong"
    assert message.usage.service_tier == "standard"


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool_use"])
def test_the_sdk_assembles_a_stream(client: anthropic.Anthropic, tools: bool) -> None:
    extra: dict[str, Any] = {"tools": TOOLS, "tool_choice": {"type": "any"}} if tools else {}
    prompt = [{"role": "user", "content": "Say something"}]
    with client.messages.stream(model="claude-sonnet-4-0", max_tokens=64, messages=prompt,
                                **extra) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.usage.output_tokens > 1 and final.usage.input_tokens > 0
    if tools:
        assert final.content[0].type == "tool_use" and text == ""
        assert set(final.content[0].input) == {"answer"}  # the JSON deltas, reassembled
    else:
        assert final.content[0].type == "text" and final.content[0].text == text != ""


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool_use"])
def test_bodies_and_events_validate_against_the_sdk_types(
    sim: SimClient, sim_server: Simulator, tools: bool,
) -> None:
    sim.update(api_keys=[KEY])
    extra: dict[str, Any] = {"tools": TOOLS, "tool_choice": {"type": "any"}} if tools else {}
    Message.model_validate(post(sim_server, **extra).json(), strict=True)
    events = sse(post(sim_server, stream=True, **extra))
    assert [name for name, _ in events][:3] == ["message_start", "content_block_start", "ping"]
    assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]
    for name, data in events:
        if name != "ping":  # ping is documented but not part of the SDK's event union
            assert EVENTS.validate_python(data, strict=True).type == name


@pytest.mark.parametrize(("model", "error", "kind"), [
    ("sim-429", anthropic.RateLimitError, "rate_limit_error"),
    ("sim-529", anthropic.InternalServerError, "overloaded_error"),
    ("sim-500", anthropic.InternalServerError, "api_error"),
    ("claude-unknown", anthropic.NotFoundError, "not_found_error"),
])
def test_errors_reach_the_sdk_as_its_own_exceptions(
    client: anthropic.Anthropic, sim: SimClient, model: str, error: type[Exception], kind: str,
) -> None:
    sim.update(models=["claude-sonnet-4-0"])
    with pytest.raises(error) as raised:
        client.messages.create(model=model, max_tokens=16, messages=PROMPT)
    body = raised.value.body  # type: ignore[attr-defined]
    parsed = ErrorResponse.model_validate(body, strict=True)
    assert parsed.error.type == kind and parsed.request_id is not None
    if model == "sim-429":
        assert int(raised.value.response.headers["retry-after"]) >= 1  # type: ignore[attr-defined]


def test_a_wrong_key_and_a_missing_version_are_refused_as_anthropic_does(
    sim: SimClient, sim_server: Simulator,
) -> None:
    sim.update(api_keys=[KEY])
    wrong = requests.post(f"{sim_server.url}/v1/messages", json={},
                          headers={"x-api-key": "nope", "anthropic-version": "2023-06-01"},
                          timeout=10)
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    unversioned = requests.post(f"{sim_server.url}/v1/messages", json={},
                                headers={"x-api-key": KEY}, timeout=10)
    assert unversioned.status_code == 400
    assert unversioned.json()["error"]["message"] == "anthropic-version: header is required"
    extra = post(sim_server, seed=7)
    assert extra.status_code == 400
    assert extra.json()["error"]["message"] == "seed: Extra inputs are not permitted"


def test_a_scenario_answer_for_the_prompt_is_what_messages_answers(
        sim: SimClient, sim_server: Simulator) -> None:
    """The same `answers` scenario key as the OpenAI endpoint's, so quality canaries can be
    made worse and better again on Anthropic targets too."""
    sim.update(api_keys=[KEY], answers={PROMPT[0]["content"]: "Pong!"})
    assert post(sim_server).json()["content"] == [{"type": "text", "text": "Pong!"}]
    other = [{"role": "user", "content": "Reply with the single word: ping"}]
    assert post(sim_server, messages=other).json()["content"][0]["text"] != "Pong!"
