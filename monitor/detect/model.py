"""Model drift: the response's `model` changed for the same requested model.

The usual cause is an alias (gpt-4o) re-pointed to a new snapshot (gpt-4o-2024-11-20).

Condition (key: the requested model, or "deployment" when the request names none, as on Azure),
warning: a successful answer names a model other than the baseline (the model the first
`warmup_probes` answers named). before = the baseline, after = the new model. Clears when
`revert_probes` answers in a row name the baseline again, or when an answer arrives
`model_accept_after_ms` after the change began (accepted: the model then answering becomes the
baseline).

Only the requested model currently sent is tracked: when the configuration asks for another
one, its baseline starts afresh and a condition of the old one clears.
"""

from __future__ import annotations

from typing import Any

from monitor.detect.base import Detector, Warmup, clip, duration, ms, name
from monitor.detect.columns import Columns
from monitor.domain import DetectionThresholds, DriftEvent, DriftKind, Observation, Severity


class ModelDetector(Detector):
    kind = DriftKind.MODEL
    severities = (Severity.WARNING,)

    def __init__(self, target: str, thresholds: DetectionThresholds) -> None:
        super().__init__(target, thresholds)
        self.requested: str | None = None
        self.baseline: str | None = None
        self.back = 0  # answers in a row naming the baseline while a condition is open

    def step(self, obs: Observation) -> list[DriftEvent]:
        if not obs.ok or obs.model is None:
            return []
        model = clip(obs.model)
        events = []
        requested = None if obs.requested_model is None else clip(obs.requested_model)
        if requested != self.requested:
            events += self._start_over(requested, obs)
        if self.learned < self.thresholds.warmup_probes:
            self.learned += 1
            self.baseline = model
            return events
        key = self._key()
        opening = self.conditions.get(key)
        if model == self.baseline:
            if opening is None:
                return events
            self.back += 1
            if self.back < self.thresholds.revert_probes:
                return events
            return [*events, self.conditions.close(
                key, obs, before=opening.after, after=model, uids=[obs.uid],
                explanation=f"{self.target} answers as {name(model)} again "
                f"({self.back} answers in a row).",
            )]
        self.back = 0
        if opening is None:
            return [*events, self.conditions.open(
                key, obs, Severity.WARNING, before=self.baseline, after=model, uids=[obs.uid],
                explanation=f"{self.target} asked for {name(self.requested or 'its deployment')} "
                f"and got {name(model)} instead of {name(self.baseline)}.",
            )]
        accept_ms = self.thresholds.model_accept_after_ms
        if ms(obs.started_at) - ms(opening.at) < accept_ms:
            return events
        self.baseline = model
        return [*events, self.conditions.close(
            key, obs, before=opening.before, after=model, uids=[*opening.probe_uids, obs.uid],
            explanation=f"{self.target} has answered as a model other than "
            f"{name(opening.before)} for {duration(accept_ms)}; {name(model)} is accepted as "
            "the new baseline.",
        )]

    def fold(self, columns: Columns) -> list[tuple[int, DriftEvent]]:
        events: list[tuple[int, DriftEvent]] = []
        # The raw (model, requested model) of an answer that step would find on the baseline
        # with nothing open and nothing to learn: such an answer changes nothing.
        steady: tuple[str, str | None] | None = None
        for i, (ok, model, requested) in enumerate(zip(
                columns.ok, columns.model, columns.requested_model, strict=True)):
            if not ok or model is None or (model, requested) == steady:
                continue
            self.step_at(columns, i, events)
            steady = (model, requested) if self._steady(model, requested) else None
        return events

    def _steady(self, model: str, requested: str | None) -> bool:
        """Whether stepping this answer again would change nothing."""
        return (self.learned >= self.thresholds.warmup_probes
                and not self.conditions.is_open(self._key()) and clip(model) == self.baseline
                and (None if requested is None else clip(requested)) == self.requested)

    def _key(self) -> str:
        return self.requested or "deployment"

    def _start_over(self, requested: str | None, obs: Observation) -> list[DriftEvent]:
        """The configuration now requests another model: nothing learned about the old applies."""
        events = []
        opening = self.conditions.get(self._key())
        if opening is not None:
            events.append(self.conditions.close(
                self._key(), obs, before=opening.after, after=None, uids=[obs.uid],
                explanation=f"{self.target} no longer requests "
                f"{name(self.requested or 'its deployment')}, so this change no longer applies.",
            ))
        self.requested = requested
        self.learned = 0
        self.baseline = None
        self.back = 0
        return events

    def warmups(self) -> list[Warmup]:
        if not self.learned:
            return []  # no model named yet (since the request last changed)
        return self.learning("model", self.learned, self.thresholds.warmup_probes)

    def dump(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "learned": self.learned,
            "baseline": self.baseline,
            "back": self.back,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.requested = state["requested"]
        self.learned = state["learned"]
        self.baseline = state["baseline"]
        self.back = state["back"]
