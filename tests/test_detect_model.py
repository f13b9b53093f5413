"""Model drift: an alias re-pointed to another snapshot."""

from __future__ import annotations

from monitor.domain import DriftEvent, DriftKind, Observation, Severity
from tests.detect_helpers import failed, index_of, obs, of_kind, run, steady

OLD, NEW = "gpt-4o-2024-08-06", "gpt-4o-2024-11-20"
DAY = 24 * 60  # probes, at one a minute


def model_events(history: list[Observation]) -> list[DriftEvent]:
    return of_kind(run(history), DriftKind.MODEL)


def test_re_pointed_alias_opens_at_once_and_clears_when_it_goes_back() -> None:
    history = [*steady(0, 50), *steady(50, 70, model=NEW), *steady(70, 100)]
    events = model_events(history)
    assert [(e.key, e.opened, index_of(e)) for e in events] == [
        ("gpt-4o", True, 50),
        ("gpt-4o", False, 72),  # the third answer in a row from the old snapshot
    ]
    opened, cleared = events
    assert (opened.before, opened.after, opened.severity) == (OLD, NEW, Severity.WARNING)
    assert opened.explanation == f"gpt-4o asked for gpt-4o and got {NEW} instead of {OLD}."
    assert (cleared.before, cleared.after) == (NEW, OLD)
    assert "again" in cleared.explanation


def test_a_lasting_change_is_accepted_after_a_day() -> None:
    history = [*steady(0, 50), *steady(50, 50 + DAY + 100, model=NEW)]
    events = model_events(history)
    assert [(e.opened, index_of(e)) for e in events] == [(True, 50), (False, 50 + DAY)]
    assert "accepted as the new baseline" in events[1].explanation
    # Going back to the old snapshot afterwards is itself a change.
    back = model_events([*history, obs(50 + DAY + 100, model=OLD)])
    assert (back[-1].opened, back[-1].before, back[-1].after) == (True, NEW, OLD)


def test_a_single_odd_answer_opens_and_the_baseline_clears_it() -> None:
    history = [*steady(0, 50), obs(50, model=NEW), *steady(51, 60)]
    assert [(e.opened, index_of(e)) for e in model_events(history)] == [(True, 50), (False, 53)]


def test_requesting_another_model_is_a_new_baseline_not_drift() -> None:
    history = [*steady(0, 50), *steady(50, 100, requested_model="gpt-4.1", model="gpt-4.1-2025")]
    assert model_events(history) == []


def test_changing_the_request_clears_an_open_condition() -> None:
    history = [
        *steady(0, 50),
        *steady(50, 55, model=NEW),
        *steady(55, 80, requested_model="gpt-4.1", model="gpt-4.1-2025"),
    ]
    events = model_events(history)
    assert [(e.opened, index_of(e)) for e in events] == [(True, 50), (False, 55)]
    assert "no longer requests gpt-4o" in events[1].explanation


def test_failed_probes_and_warm_up_never_alert() -> None:
    history = [obs(i, model=f"m{i}") for i in range(10)]
    history += [failed(i) for i in range(10, 20)] + steady(20, 50, model="m9")
    assert model_events(history) == []


def test_azure_deployments_are_keyed_as_deployment() -> None:
    history = [*steady(0, 20, requested_model=None), obs(20, requested_model=None, model=NEW)]
    (event,) = model_events(history)
    assert event.key == "deployment"
    assert "asked for its deployment" in event.explanation
