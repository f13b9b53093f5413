"""Checks on a canary's answer (a target's `checks`): each gives pass, fail with a one-line
reason, or not applicable.

Pure: the same answer and checks give the same outcomes, whether the answer was just received
(the daemon), read back from the store (`monitor detect --since` re-evaluates stored answers with
the current config) or sent again (`monitor replay`). Every check of a failed probe is not
applicable, as is a token limit on an answer that reported no usage.

Model output is untrusted: a reason quotes it escaped (JSON string syntax, so a newline or a
control character cannot break the line) and cut to a preview.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from monitor.domain import Check, CheckKind, CheckOutcome, CheckResult, ProbeResult, ToolCall

# Enough of an answer to recognise it in a one-line reason.
PREVIEW_CHARS = 60


@dataclass(frozen=True)
class Answer:
    """What the checks read of one probe."""

    ok: bool
    content: str | None
    finish_reason: str | None
    completion_tokens: int | None
    total_ms: float | None
    tool_calls: tuple[ToolCall, ...] = ()

    @classmethod
    def of(cls, result: ProbeResult) -> Answer:
        first = result.choices[0] if result.choices else None
        return cls(
            ok=result.ok, content=result.content, finish_reason=result.finish_reason,
            completion_tokens=result.usage.completion_tokens, total_ms=result.total_ms,
            tool_calls=first.tool_calls if first is not None else (),
        )


def stored_answer(ok: bool, content: str | None, finish_reason: str | None,
                  completion_tokens: int | None, total_ms: float | None,
                  choices: list[dict[str, Any]] | None) -> Answer:
    """An Answer from a stored probe's columns (`choices` as stored: tool calls in the first)."""
    calls = (choices or [{}])[0].get("tool_calls") or []
    return Answer(ok=ok, content=content, finish_reason=finish_reason,
                  completion_tokens=completion_tokens, total_ms=total_ms,
                  tool_calls=tuple(ToolCall(call.get("name"), call.get("arguments"))
                                   for call in calls))


def preview(text: str | None) -> str:
    """An answer as a reason quotes it: escaped, cut to PREVIEW_CHARS."""
    if text is None:
        return "no text"
    cut = text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"
    return json.dumps(cut, ensure_ascii=False)


def _mismatch(instance: Any, schema: dict[str, Any]) -> str | None:
    """The most relevant way `instance` misses `schema`, in one line, or None if it matches."""
    # Here, not at the top: ~25 ms that only targets with a json_schema check need.
    import jsonschema
    from jsonschema.exceptions import best_match

    validator = jsonschema.validators.validator_for(schema)(schema)
    error = best_match(validator.iter_errors(instance))
    if error is None:
        return None
    where = error.json_path
    message = error.message if len(error.message) <= 120 else error.message[:119] + "…"
    return " ".join(f"{message} (at {where})".split())


def _parse(text: str | None) -> tuple[bool, Any]:
    try:
        return True, json.loads(text or "")
    except (ValueError, RecursionError):
        return False, None


def _equals(expected: str, answer: Answer) -> str | None:
    if answer.content is not None and answer.content.strip() == expected.strip():
        return None
    return f"answered {preview(answer.content)}, not {preview(expected)}"


def _contains(expected: str, answer: Answer) -> str | None:
    if answer.content is not None and expected in answer.content:
        return None
    return f"answered {preview(answer.content)}, without {preview(expected)}"


def _regex(pattern: str, answer: Answer) -> str | None:
    if answer.content is not None and re.search(pattern, answer.content):
        return None
    return f"answered {preview(answer.content)}, not matching {preview(pattern)}"


def _json_schema(schema: dict[str, Any], answer: Answer) -> str | None:
    parsed, document = _parse(answer.content)
    if not parsed:
        return f"answered {preview(answer.content)}, not JSON"
    mismatch = _mismatch(document, schema)
    return None if mismatch is None else f"answered {preview(answer.content)}: {mismatch}"


def _finish_reason(expected: str, answer: Answer) -> str | None:
    if answer.finish_reason == expected:
        return None
    return f"finished with {preview(answer.finish_reason)}, not {preview(expected)}"


def _max_completion_tokens(limit: int, answer: Answer) -> str | None:
    assert answer.completion_tokens is not None  # not applicable otherwise
    if answer.completion_tokens <= limit:
        return None
    return f"used {answer.completion_tokens} completion tokens, more than {limit}"


def _max_total(limit_ms: int, answer: Answer) -> str | None:
    assert answer.total_ms is not None  # not applicable otherwise
    if answer.total_ms <= limit_ms:
        return None
    return f"took {answer.total_ms:.0f} ms, more than {limit_ms} ms"


def _tool_call(expected: dict[str, Any], answer: Answer) -> str | None:
    wanted = expected["name"]
    calls = [call for call in answer.tool_calls if call.name == wanted]
    if not calls:
        if not answer.tool_calls:
            return f"called no tool (answered {preview(answer.content)})"
        names = ", ".join(preview(call.name) for call in answer.tool_calls)
        return f"called {names}, not {preview(wanted)}"
    schema = expected.get("arguments")
    reasons = []
    for call in calls:
        parsed, arguments = _parse(call.arguments)
        if not parsed:
            reasons.append(f"called {preview(wanted)} with arguments that are not JSON: "
                           f"{preview(call.arguments)}")
            continue
        mismatch = None if schema is None else _mismatch(arguments, schema)
        if mismatch is None:
            return None
        reasons.append(f"called {preview(wanted)} with {preview(call.arguments)}: {mismatch}")
    return reasons[0]


_EVALUATE: dict[CheckKind, Callable[[Any, Answer], str | None]] = {
    CheckKind.CONTENT_EQUALS: _equals,
    CheckKind.CONTENT_CONTAINS: _contains,
    CheckKind.CONTENT_REGEX: _regex,
    CheckKind.JSON_SCHEMA: _json_schema,
    CheckKind.FINISH_REASON: _finish_reason,
    CheckKind.MAX_COMPLETION_TOKENS: _max_completion_tokens,
    CheckKind.MAX_TOTAL: _max_total,
    CheckKind.TOOL_CALL: _tool_call,
}


def _applicable(check: Check, answer: Answer) -> bool:
    if not answer.ok:
        return False
    if check.kind is CheckKind.MAX_COMPLETION_TOKENS:
        return answer.completion_tokens is not None
    if check.kind is CheckKind.MAX_TOTAL:
        return answer.total_ms is not None
    return True


def evaluate(checks: Sequence[Check], answer: Answer) -> tuple[CheckResult, ...]:
    """Every check's outcome on `answer`, in the checks' order."""
    results = []
    for check in checks:
        if not _applicable(check, answer):
            results.append(CheckResult(check.name, CheckOutcome.NOT_APPLICABLE))
            continue
        reason = _EVALUATE[check.kind](check.expected, answer)
        outcome = CheckOutcome.PASS if reason is None else CheckOutcome.FAIL
        results.append(CheckResult(check.name, outcome, reason))
    return tuple(results)

