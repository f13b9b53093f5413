"""Parsing real bodies and streams (tests/fixtures) into fields: pure, no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.domain import Choice, ErrorKind, ToolCall, Usage
from monitor.probe.completion import CompletionError, StreamAssembler, parse_completion

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SERVERS = FIXTURES / "compatible-servers"


def _assemble(data: bytes, piece: int = 7) -> StreamAssembler:
    assembler = StreamAssembler()
    for start in range(0, len(data), piece):  # arbitrary network boundaries
        assembler.feed(data[start : start + piece])
    return assembler


def test_openai_fixture_yields_every_field() -> None:
    body = json.loads((FIXTURES / "openai-chat-completion.json").read_text())["response_body"]
    completion = parse_completion(json.dumps(body).encode())
    assert completion.response_id == "chatcmpl-BDXMEvOKQnSYFATQSDa0BbxRSDUrN"
    assert completion.created == 1742566190
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.system_fingerprint == "fp_6ec83003ad"
    assert completion.service_tier == "default"
    assert completion.choices == (
        Choice(index=0, finish_reason="stop", content=body["choices"][0]["message"]["content"]),
    )
    assert completion.usage == Usage(
        prompt_tokens=27,
        completion_tokens=44,
        total_tokens=71,
        cached_tokens=0,
        prompt_audio_tokens=0,
        reasoning_tokens=0,
        completion_audio_tokens=0,
        accepted_prediction_tokens=0,
        rejected_prediction_tokens=0,
    )


@pytest.mark.parametrize("server", ["litellm-proxy", "llama-cpp-python", "transformers-serve"])
def test_compatible_servers_plain_bodies_parse_without_invented_values(server: str) -> None:
    completion = parse_completion((SERVERS / server / "chat.json").read_bytes())
    assert completion.system_fingerprint is None  # none of them sends one
    assert completion.service_tier is None
    assert completion.usage.cached_tokens is None
    assert completion.choices[0].content
    assert completion.usage.total_tokens is not None


def test_litellm_stream_reassembles_with_usage_and_done() -> None:
    assembler = _assemble((SERVERS / "litellm-proxy/stream.sse").read_bytes())
    completion = assembler.finish()
    assert assembler.done
    assert completion.choices[0].content == "Hello from the LiteLLM mock. The canary is alive."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 14
    assert completion.usage.reasoning_tokens == 0


def test_llama_cpp_stream_without_usage_records_no_usage() -> None:
    completion = _assemble((SERVERS / "llama-cpp-python/stream.sse").read_bytes()).finish()
    assert completion.usage == Usage()
    assert completion.choices[0].finish_reason == "length"
    plain = parse_completion((SERVERS / "llama-cpp-python/chat.json").read_bytes())
    assert completion.choices[0].content == plain.choices[0].content


def test_transformers_stream_without_done_is_complete_and_keeps_empty_fingerprint() -> None:
    assembler = _assemble((SERVERS / "transformers-serve/stream.sse").read_bytes())
    completion = assembler.finish()
    assert not assembler.done
    assert completion.system_fingerprint == ""  # recorded as sent, not turned into a value
    assert completion.usage.completion_tokens == 16
    assert completion.choices[0].finish_reason == "length"


def test_stream_cut_mid_way_is_truncated() -> None:
    data = (SERVERS / "litellm-proxy/stream.sse").read_bytes()
    assembler = _assemble(data[: len(data) // 2])
    with pytest.raises(CompletionError) as caught:
        assembler.finish()
    assert caught.value.kind is ErrorKind.TRUNCATED_STREAM
    assert assembler.partial().choices[0].content  # what did arrive is kept


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        pytest.param(b'{"id": "x", "choices": [', ErrorKind.INVALID_JSON, id="truncated-json"),
        pytest.param(b"<html>oops</html>", ErrorKind.INVALID_JSON, id="html"),
        pytest.param(b"[]", ErrorKind.INVALID_RESPONSE, id="array"),
        pytest.param(b'{"object": "chat.completion"}', ErrorKind.INVALID_RESPONSE, id="no-choices"),
        pytest.param(b'{"choices": [{"index": 0}]}', ErrorKind.INVALID_RESPONSE, id="no-message"),
        pytest.param(
            (SERVERS / "transformers-serve/error.json").read_bytes(),
            ErrorKind.INVALID_RESPONSE,
            id="fastapi-detail",
        ),
    ],
)
def test_bodies_that_are_not_completions(body: bytes, kind: ErrorKind) -> None:
    with pytest.raises(CompletionError) as caught:
        parse_completion(body)
    assert caught.value.kind is kind


def test_error_event_mid_stream_is_refused() -> None:
    assembler = StreamAssembler()
    with pytest.raises(CompletionError) as caught:
        assembler.feed(b'data: {"error": {"message": "overloaded"}}\n\n')
    assert "overloaded" in caught.value.detail


def test_tool_calls_are_captured_from_a_body_and_reassembled_from_a_stream() -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    body = {"id": "x", "choices": [{"index": 0, "finish_reason": "tool_calls",
                                    "message": {"role": "assistant", "content": None,
                                                "tool_calls": [call, "junk"]}}]}
    (choice,) = parse_completion(json.dumps(body).encode()).choices
    assert choice.tool_calls == (ToolCall("get_weather", '{"city": "Paris"}', "call_1"),)

    pieces = [{"index": 0, "id": "call_1", "function": {"name": "get_weather", "arguments": ""}},
              {"index": 0, "function": {"arguments": '{"city": '}},
              {"index": 0, "function": {"arguments": '"Paris"}'}}]
    assembler = StreamAssembler()
    for piece in pieces:
        chunk = {"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]}
        assembler.feed(f"data: {json.dumps(chunk)}\n\n".encode())
    done = {"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    assembler.feed(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
    (choice,) = assembler.finish().choices
    assert choice.tool_calls == (ToolCall("get_weather", '{"city": "Paris"}', "call_1"),)


def test_a_choice_is_stored_with_tool_calls_and_refusal_only_when_it_has_them() -> None:
    from monitor.store.records import _choice

    assert _choice(Choice(0, "stop", "pong")) == {
        "index": 0, "finish_reason": "stop", "content": "pong"}
    assert _choice(Choice(0, "stop", None, refusal="")) == {
        "index": 0, "finish_reason": "stop", "content": None, "refusal": ""}
    assert _choice(Choice(0, "tool_calls", None, tool_calls=(ToolCall("f", "{}"),)))[
        "tool_calls"] == [{"name": "f", "arguments": "{}", "id": None}]
