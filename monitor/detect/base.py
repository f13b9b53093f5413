"""What every detector shares: the open conditions, how events are made, and state snapshots.

A condition opens with one event and clears with another of the same key; in between, the
opening event is the condition. Detectors keep nothing but these events and bounded windows,
and both survive `snapshot()` -> JSON -> `restore()` unchanged, so a fold can stop and resume
anywhere in a history.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol, Self

from monitor.detect.columns import Columns
from monitor.domain import DetectionThresholds, DriftEvent, DriftKind, Observation, Severity

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Enough probes to go and look at, few enough that an event stays a small row.
MAX_UIDS = 5
# Model output and server-sent names are untrusted and unbounded: events keep a preview.
MAX_VALUE_CHARS = 200
# A name quoted inside an explanation sentence.
MAX_NAME_CHARS = 64


def ms(at: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding), for an aware datetime."""
    return (at - _EPOCH) // timedelta(milliseconds=1)


def clip(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def name(text: str | None) -> str:
    """A server-sent value as it reads in a sentence."""
    return "none" if text is None else clip(text, MAX_NAME_CHARS)


def last_uids(uids: Iterable[str]) -> tuple[str, ...]:
    """The newest MAX_UIDS probe uids, oldest first."""
    return tuple(list(uids)[-MAX_UIDS:])


def duration(milliseconds: int) -> str:
    """'24 h', '90 min', '45 s': how long a person would say."""
    if milliseconds >= 3_600_000 and milliseconds % 3_600_000 == 0:
        return f"{milliseconds // 3_600_000} h"
    if milliseconds >= 60_000:
        return f"{round(milliseconds / 60_000)} min"
    return f"{round(milliseconds / 1000)} s"


def event_to_json(event: DriftEvent) -> dict[str, Any]:
    return {
        "target": event.target,
        "kind": event.kind.value,
        "key": event.key,
        "opened": event.opened,
        "severity": event.severity.value,
        "at": event.at.isoformat(),
        "before": event.before,
        "after": event.after,
        "probe_uids": list(event.probe_uids),
        "explanation": event.explanation,
    }


def event_from_json(data: dict[str, Any]) -> DriftEvent:
    return DriftEvent(
        target=data["target"],
        kind=DriftKind(data["kind"]),
        key=data["key"],
        opened=data["opened"],
        severity=Severity(data["severity"]),
        at=datetime.fromisoformat(data["at"]),
        before=data["before"],
        after=data["after"],
        probe_uids=tuple(data["probe_uids"]),
        explanation=data["explanation"],
    )


@dataclass(frozen=True)
class Warmup:
    """A baseline still being learned, so the conditions that compare with it stay silent:
    `seen` of the `needed` probes it takes in (what "learning <baseline> (seen of needed
    probes)" says)."""

    detector: str  # the DriftKind value
    baseline: str
    seen: int
    needed: int


class Streak(Protocol):
    """A baseline that counts the probes in a row that came back to it."""

    back: int


class Conditions:
    """The open conditions of one detector, by key, and the events that open and clear them.

    before/after must be built from lists, dicts, str, numbers and None only (never tuples), so
    that an event restored from JSON equals the one that was saved.
    """

    def __init__(self, target: str, kind: DriftKind,
                 severities: tuple[Severity, ...] = tuple(Severity)) -> None:
        self.target = target
        self.kind = kind
        self.severities = severities
        self._open: dict[str, DriftEvent] = {}

    def get(self, key: str) -> DriftEvent | None:
        return self._open.get(key)

    def is_open(self, key: str) -> bool:
        return key in self._open

    def open(
        self,
        key: str,
        obs: Observation,
        severity: Severity,
        *,
        before: Any,
        after: Any,
        uids: Iterable[str],
        explanation: str,
    ) -> DriftEvent:
        if key in self._open:
            raise ValueError(f"{self.kind.value} condition {key!r} is already open")
        if severity not in self.severities:
            raise ValueError(f"{self.kind.value} declares no {severity.value} conditions")
        event = DriftEvent(
            target=self.target, kind=self.kind, key=key, opened=True, severity=severity,
            at=obs.started_at, before=before, after=after, probe_uids=last_uids(uids),
            explanation=explanation,
        )
        self._open[key] = event
        return event

    def close(
        self,
        key: str,
        obs: Observation,
        *,
        before: Any,
        after: Any,
        uids: Iterable[str],
        explanation: str,
    ) -> DriftEvent:
        opening = self._open.pop(key)
        return DriftEvent(
            target=self.target, kind=self.kind, key=key, opened=False, severity=opening.severity,
            at=obs.started_at, before=before, after=after, probe_uids=last_uids(uids),
            explanation=explanation,
        )

    def close_when_back(
        self,
        key: str,
        obs: Observation,
        streak: Streak,
        needed: int,
        *,
        after: Any,
        explanation: Callable[[int], str],
    ) -> list[DriftEvent]:
        """`obs` is back at the baseline: close the open condition `key` once `needed` probes
        in a row were (one back is a flap, not a recovery); nothing while none is open.
        `explanation` gets the streak's length."""
        opening = self._open.get(key)
        if opening is None:
            return []
        streak.back += 1
        if streak.back < needed:
            return []
        return [self.close(key, obs, before=opening.after, after=after, uids=[obs.uid],
                           explanation=explanation(streak.back))]

    def active(self) -> list[DriftEvent]:
        return list(self._open.values())

    def dump(self) -> list[dict[str, Any]]:
        return [event_to_json(event) for event in self._open.values()]

    def load(self, data: list[dict[str, Any]]) -> None:
        self._open = {event.key: event for event in map(event_from_json, data)}


class Detector(abc.ABC):
    """One drift kind folded over one target's observations, in time order.

    `step` must depend only on the observation and the state that `dump` saves, never on a
    clock or anything outside, so live detection and a replay of history agree.
    """

    kind: ClassVar[DriftKind]
    # Every severity its conditions can have (what /metrics lays out zeros for).
    severities: ClassVar[tuple[Severity, ...]]

    def __init__(self, target: str, thresholds: DetectionThresholds) -> None:
        self.target = target
        self.thresholds = thresholds
        self.conditions = Conditions(target, self.kind, self.severities)
        self.learned = 0  # probes taken into the baseline so far (the warm-up)

    @abc.abstractmethod
    def step(self, obs: Observation) -> list[DriftEvent]:
        """Take in one observation; return the events of conditions it opened or cleared."""

    def fold(self, columns: Columns) -> list[tuple[int, DriftEvent]]:
        """Step every observation of `columns` in turn; each event with its probe's index.
        Detectors override it with a walk over the columns that skips what provably changes
        nothing, and must give exactly these events and this state."""
        events: list[tuple[int, DriftEvent]] = []
        for i in range(len(columns)):
            self.step_at(columns, i, events)
        return events

    def step_at(self, columns: Columns, i: int, events: list[tuple[int, DriftEvent]]) -> None:
        """Step observation i of `columns` the ordinary way, adding its events to `events`."""
        for event in self.step(columns.observation(i)):
            events.append((i, event))

    @abc.abstractmethod
    def warmups(self) -> list[Warmup]:
        """The baselines still learning, as of the observations taken in so far."""

    def learning(self, baseline: str, seen: int, needed: int) -> list[Warmup]:
        """[the warm-up] while `seen` < `needed`, else []."""
        if seen >= needed:
            return []
        return [Warmup(self.kind.value, baseline, seen, needed)]

    @abc.abstractmethod
    def dump(self) -> dict[str, Any]:
        """Everything but the open conditions, as JSON-able data."""

    @abc.abstractmethod
    def load(self, state: dict[str, Any]) -> None:
        """Take back what `dump` gave, sized to the current thresholds."""

    def snapshot(self) -> dict[str, Any]:
        return {"conditions": self.conditions.dump(), "state": self.dump()}

    @classmethod
    def restore(
        cls, target: str, thresholds: DetectionThresholds, snapshot: dict[str, Any]
    ) -> Self:
        detector = cls(target, thresholds)
        detector.conditions.load(snapshot["conditions"])
        detector.load(snapshot["state"])
        return detector
