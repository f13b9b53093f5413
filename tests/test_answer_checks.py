"""Checks on one answer: pure, table-driven (answer in -> outcome and reason out)."""

from __future__ import annotations

from typing import Any

import pytest

from monitor.domain import Check, CheckKind, CheckOutcome, CheckResult, ToolCall
from monitor.probe.checks import Answer, evaluate

PASS, FAIL, NA = CheckOutcome.PASS, CheckOutcome.FAIL, CheckOutcome.NOT_APPLICABLE
SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"const": 4}}}
WEATHER = {"name": "get_weather", "arguments": {
    "type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}


def answer(content: str | None = "391", **fields: Any) -> Answer:
    values: dict[str, Any] = {"ok": True, "content": content, "finish_reason": "stop",
                              "completion_tokens": 3, "total_ms": 420.0, **fields}
    return Answer(**values)


@pytest.mark.parametrize(
    ("kind", "expected", "given", "outcome", "reason"),
    [
        pytest.param("content_equals", "391", answer(" 391\n"), PASS, None, id="equals-trimmed"),
        pytest.param("content_equals", "391", answer("Three hundred ninety-one"), FAIL,
                     'answered "Three hundred ninety-one", not "391"', id="equals-fails"),
        pytest.param("content_contains", "91", answer(), PASS, None, id="contains"),
        pytest.param("content_contains", "x", answer(None), FAIL,
                     'answered no text, without "x"', id="contains-no-text"),
        pytest.param("content_regex", "^[0-9]+$", answer("391"), PASS, None, id="regex"),
        pytest.param("content_regex", "^[0-9]+$", answer("391.\nok"), FAIL,
                     'answered "391.\\nok", not matching "^[0-9]+$"', id="regex-escapes-newline"),
        pytest.param("json_schema", SCHEMA, answer('{"answer": 4}'), PASS, None, id="schema"),
        pytest.param("json_schema", SCHEMA, answer('{"answer": 5}'), FAIL,
                     'answered "{\\"answer\\": 5}": 4 was expected (at $.answer)',
                     id="schema-mismatch"),
        pytest.param("json_schema", SCHEMA, answer("four"), FAIL,
                     'answered "four", not JSON', id="schema-not-json"),
        pytest.param("finish_reason", "stop", answer(finish_reason="length"), FAIL,
                     'finished with "length", not "stop"', id="finish-reason"),
        pytest.param("max_completion_tokens", 2, answer(), FAIL,
                     "used 3 completion tokens, more than 2", id="tokens"),
        pytest.param("max_completion_tokens", 2, answer(completion_tokens=None), NA, None,
                     id="tokens-not-reported"),
        pytest.param("max_total", 400, answer(), FAIL, "took 420 ms, more than 400 ms",
                     id="total"),
        pytest.param("max_total", 500, answer(), PASS, None, id="total-ok"),
        pytest.param("tool_call", WEATHER, answer(None, tool_calls=(
            ToolCall("get_weather", '{"city": "Paris"}'),)), PASS, None, id="tool"),
        pytest.param("tool_call", WEATHER, answer("It is sunny"), FAIL,
                     'called no tool (answered "It is sunny")', id="tool-none"),
        pytest.param("tool_call", WEATHER, answer(None, tool_calls=(
            ToolCall("get_time", "{}"),)), FAIL, 'called "get_time", not "get_weather"',
            id="tool-other"),
        pytest.param("tool_call", WEATHER, answer(None, tool_calls=(
            ToolCall("get_weather", '{"town": "Paris"}'),)), FAIL,
            'called "get_weather" with "{\\"town\\": \\"Paris\\"}": \'city\' is a required '
            "property (at $)", id="tool-arguments"),
        pytest.param("tool_call", {"name": "get_weather", "arguments": None}, answer(
            None, tool_calls=(ToolCall("get_weather", "{oops"),)), FAIL,
            'called "get_weather" with arguments that are not JSON: "{oops"', id="tool-not-json"),
    ],
)
def test_each_kind_passes_or_fails_with_a_one_line_reason(
    kind: str, expected: Any, given: Answer, outcome: CheckOutcome, reason: str | None
) -> None:
    check = Check(kind, CheckKind(kind), expected)
    assert evaluate([check], given) == (CheckResult(kind, outcome, reason),)


def test_every_check_of_a_failed_probe_is_not_applicable() -> None:
    checks = [Check("content_equals", CheckKind.CONTENT_EQUALS, "391"),
              Check("max_total", CheckKind.MAX_TOTAL, 5000)]
    assert evaluate(checks, answer(None, ok=False, total_ms=None)) == (
        CheckResult("content_equals", NA), CheckResult("max_total", NA))


def test_a_long_answer_is_cut_in_the_reason() -> None:
    (result,) = evaluate([Check("c", CheckKind.CONTENT_EQUALS, "391")], answer("x" * 500))
    assert result.reason is not None and len(result.reason) < 100 and "…" in result.reason
