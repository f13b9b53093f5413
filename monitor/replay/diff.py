"""What `monitor replay` prints: an original and its replays side by side, with the content as
a unified diff, and a batch's summary, as text or as JSON.

Model output and server text are untrusted. Every such string is escaped with safe_text (and
bidirectional overrides too, which would reorder what the terminal shows) before it is
printed. JSON is written ASCII-only, so it cannot carry a raw control character either.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from monitor.render.text import safe_text
from monitor.replay.batch import BatchSummary, Latency
from monitor.replay.send import Outcome
from monitor.store.replays import StoredAnswer

_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LABEL_WIDTH = 20
_COLUMN_WIDTH = 30


def safe(text: str, limit: int = 80) -> str:
    return safe_text(_BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", text), limit)


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _outcome(a: StoredAnswer) -> str:
    status = _count(a.http_status)
    return f"ok {status}" if a.ok else f"{a.error_kind or 'failed'} {status}"


def _left(remaining: int | None, limit: int | None) -> str:
    return "-" if remaining is None else f"{remaining} of {_count(limit)}"


# (label, value, compared): a compared row is marked `*` when a replay differs from the original.
_Row = tuple[str, Callable[[StoredAnswer], str], bool]
_ROWS: tuple[_Row, ...] = (
    ("outcome", _outcome, True),
    ("model", lambda a: a.model or "-", True),
    ("system_fingerprint", lambda a: a.system_fingerprint or "-", True),
    ("finish_reason", lambda a: a.finish_reason or "-", True),
    ("content", lambda a: "-" if a.content is None else a.content, True),
    ("usage (tokens)", lambda a: f"{_count(a.prompt_tokens)} + {_count(a.completion_tokens)}"
                                 f" = {_count(a.total_tokens)}", True),
    ("latency", lambda a: _ms(a.total_ms), False),
    ("first token", lambda a: _ms(a.time_to_first_token_ms), False),
    ("requests left", lambda a: _left(a.remaining_requests, a.limit_requests), False),
    ("tokens left", lambda a: _left(a.remaining_tokens, a.limit_tokens), False),
)


def changed_fields(original: StoredAnswer, replay: StoredAnswer) -> list[str]:
    """The compared fields whose value differs, in table order."""
    return [label.split(" ")[0] for label, value, compared in _ROWS
            if compared and value(original) != value(replay)]


def content_diff(original: StoredAnswer, replay: StoredAnswer) -> list[str]:
    """A unified diff of the two contents, each line escaped; empty when they are equal."""
    lines = difflib.unified_diff(
        # Split on newlines only: str.splitlines would also break (and so hide) \x1c, \x85...
        (original.content or "").split("\n"), (replay.content or "").split("\n"),
        f"original #{original.probe_id}", f"replay #{replay.probe_id}", lineterm="")
    return [safe(line, 500) for line in lines]


def _model_change(change: tuple[str | None, str | None], destination: str) -> str:
    stored, sent = change
    shown = repr(safe(sent)) if sent is not None else "nothing (its deployment decides)"
    return (f"model in the payload replaced: {safe(repr(stored))} -> {shown}, the model "
            f"{safe(destination)} is configured with")


def render_outcome(outcome: Outcome) -> str:
    original = outcome.original
    lines = [(f"replay of probe #{original.probe_id} (target {safe(original.target)}, sent "
              f"{original.started_at.isoformat(timespec='seconds')}) to "
              f"{safe(outcome.destination)}")]
    if outcome.model_change is not None:
        lines.append(_model_change(outcome.model_change, outcome.destination))
    columns = [original, *outcome.replays]
    heads = [f"original #{original.probe_id}"] + [f"replay #{r.probe_id}"
                                                  for r in outcome.replays]
    lines.append("")
    lines.append(("  " + " " * _LABEL_WIDTH + "".join(h.ljust(_COLUMN_WIDTH)
                                                     for h in heads)).rstrip())
    for label, value, compared in _ROWS:
        values = [value(a) for a in columns]
        mark = "*" if compared and any(v != values[0] for v in values[1:]) else " "
        cells = "".join(safe(v, _COLUMN_WIDTH - 2).ljust(_COLUMN_WIDTH) for v in values)
        lines.append(f"{mark} {label.ljust(_LABEL_WIDTH)}{cells}".rstrip())
    lines += _checks(outcome)
    lines.append("")
    diffs = [content_diff(original, replay) for replay in outcome.replays]
    if not any(diffs):
        lines.append("content: unchanged")
    for diff in diffs:
        lines.extend(diff)
    return "\n".join(lines)


def _checks(outcome: Outcome) -> list[str]:
    """Each check's outcome on the original and on each replay, then the reasons it failed."""
    if not outcome.checks or not outcome.checks[0]:
        return []  # the destination has no checks
    lines = ["", f"checks of {safe(outcome.destination)} as configured now:"]
    reasons = []
    for row, first in enumerate(outcome.checks[0]):
        results = [judged[row] for judged in outcome.checks]
        cells = [r.outcome.value.replace("not_applicable", "n/a") for r in results]
        mark = "*" if any(cell != cells[0] for cell in cells[1:]) else " "
        lines.append(f"{mark} {safe(first.check, _LABEL_WIDTH - 1).ljust(_LABEL_WIDTH)}"
                     + "".join(cell.ljust(_COLUMN_WIDTH) for cell in cells).rstrip())
        names = ["the original"] + [f"replay #{r.probe_id}" for r in outcome.replays]
        reasons += [f"  {safe(first.check)} on {name}: {safe(r.reason, 300)}"
                    for name, r in zip(names, results, strict=True) if r.reason]
    return lines + reasons


def _answer_json(answer: StoredAnswer) -> dict[str, Any]:
    data = asdict(answer)
    data["started_at"] = answer.started_at.isoformat()
    return data


def outcome_json(outcome: Outcome) -> str:
    change = outcome.model_change
    judged = [[{"check": r.check, "outcome": r.outcome.value, "reason": r.reason}
               for r in checks] for checks in outcome.checks]
    document = {
        "original": {**_answer_json(outcome.original), "checks": judged[0]},
        "destination": outcome.destination,
        "model_change": None if change is None else {"stored": change[0], "sent": change[1]},
        "replays": [
            {**_answer_json(replay), "changed": changed_fields(outcome.original, replay),
             "content_diff": content_diff(outcome.original, replay), "checks": checks}
            for replay, checks in zip(outcome.replays, judged[1:], strict=True)
        ],
    }
    return json.dumps(document, indent=2)


def _latency(before: Latency, after: Latency, name: str) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    return (f"  {name}  {ms(getattr(before, name + '_ms'))} -> "
            f"{ms(getattr(after, name + '_ms'))} ms")


def render_summary(summary: BatchSummary) -> str:
    s = summary
    start = "resumed" if s.resumed else "new"
    lines = [(f"run #{s.run_id} ({start}) to {safe(s.destination)}: {s.done} of {s.items} "
              f"stored requests replayed ({s.sent_now} now), {s.pending} pending")]
    if s.model_change is not None:
        lines.append(_model_change(s.model_change, s.destination))
    if s.lost:
        lines.append(f"{s.lost} interrupted in flight by a killed run: not re-sent, since the "
                     "server may have answered them")
    if s.rate_limited:
        lines.append(f"429s waited out: {s.rate_limited}")
    lines.append(f"changed: content {s.content_changed}, fingerprint {s.fingerprint_changed}, "
                 f"model {s.model_changed} (among answers that succeeded both times)")
    lines.append(f"failed now: {s.failed}; failed before but answered now: {s.recovered}")
    if s.checks:
        judged = next(iter(s.checks.values()))[0]
        lines.append(f"checks passed, original -> replay (of the {judged} that answered both "
                     "times): " + ", ".join(f"{safe(name)} {before} -> {after}"
                                             for name, (_, before, after) in s.checks.items()))
    lines.append("latency (total, original -> replay)")
    lines.append(_latency(s.original, s.replay, "p50"))
    lines.append(_latency(s.original, s.replay, "p95"))
    if s.stopped is not None:
        lines.append(f"stopped: {safe(s.stopped, 200)}; run the same command again to continue")
    elif s.pending == 0:
        lines.append("run complete")
    return "\n".join(lines)


def summary_json(summary: BatchSummary) -> str:
    data = asdict(summary)
    change = summary.model_change
    data["model_change"] = None if change is None else {"stored": change[0], "sent": change[1]}
    return json.dumps(data, indent=2)
