"""Output drift of a deterministic canary: answer, finish_reason, prompt token count."""

from __future__ import annotations

from monitor.domain import DriftEvent, DriftKind, Observation, Severity
from tests.detect_helpers import failed, index_of, obs, of_kind, run, steady

DAY = 24 * 60  # probes, at one a minute


def output_events(history: list[Observation]) -> list[DriftEvent]:
    return of_kind(run(history), DriftKind.OUTPUT)


def test_a_different_answer_opens_at_once_and_clears_when_it_returns() -> None:
    history = [*steady(0, 50), *steady(50, 55, content="Pong."), *steady(55, 70)]
    events = output_events(history)
    assert [(e.key, e.opened, index_of(e)) for e in events] == [
        ("content", True, 50),
        ("content", False, 57),
    ]
    opened, cleared = events
    assert (opened.before, opened.after, opened.severity) == (["pong"], "Pong.", Severity.WARNING)
    assert "different answer to its deterministic request" in opened.explanation
    assert "Pong." not in opened.explanation  # model output stays data, never prose
    assert (cleared.before, cleared.after) == ("Pong.", "pong")


def test_finish_reason_and_prompt_tokens_have_their_own_conditions() -> None:
    history = [*steady(0, 50), *steady(50, 60, finish_reason="length", prompt_tokens=25)]
    events = output_events(history)
    assert [(e.key, e.before, e.after) for e in events] == [
        ("finish_reason", ["stop"], "length"),
        ("prompt_tokens", [14], 25),
    ]
    assert events[1].explanation == (
        "gpt-4o's identical request is now counted as 25 prompt tokens instead of 14: "
        "a tokenizer change or a hidden system prompt."
    )


def test_a_lasting_change_is_accepted_after_a_day() -> None:
    history = [*steady(0, 50), *steady(50, 60 + DAY, content="Pong!")]
    events = output_events(history)
    assert [(e.opened, index_of(e)) for e in events] == [(True, 50), (False, 50 + DAY)]
    assert "accepted as the new baseline" in events[1].explanation
    again = output_events([*history, obs(60 + DAY)])
    assert (again[-1].opened, again[-1].before, again[-1].after) == (True, ["Pong!"], "pong")


def test_long_answers_are_cut_in_events() -> None:
    history = [*steady(0, 50), obs(50, content="x" * 5000)]
    (event,) = output_events(history)
    assert len(event.after) == 200 and event.after.endswith("…")


def test_variants_seen_while_learning_are_all_baseline() -> None:
    history = [obs(i, content="pong" if i % 2 else "Pong") for i in range(200)]
    assert output_events(history) == []


def test_non_deterministic_and_failed_probes_are_ignored() -> None:
    history = [*steady(0, 50), *steady(50, 100, deterministic=False, content="anything")]
    history += [failed(i) for i in range(100, 102)]
    assert output_events(history) == []


def test_a_new_request_starts_a_new_baseline_and_clears_open_conditions() -> None:
    history = [
        *steady(0, 50),
        *steady(50, 52, content="Pong."),
        *steady(52, 100, request_hash="req-2", content="ping", prompt_tokens=20),
    ]
    events = output_events(history)
    assert [(e.opened, index_of(e)) for e in events] == [(True, 50), (False, 52)]
    assert "request changed" in events[1].explanation


def test_warm_up_never_alerts() -> None:
    history = [obs(i, content=f"answer {i % 3}", prompt_tokens=14 + i % 2) for i in range(10)]
    assert output_events(history) == []
    assert output_events([*history, obs(10, content="answer 9")])
