"""Output drift of a deterministic canary (temperature 0 and a seed): the same request should
get the same answer, so a different one means the model, its tokenizer or a hidden prompt moved.

Conditions (key), warning, compared per request (request_hash) against the values the first
`warmup_probes` deterministic answers to it gave:
- "content": the answer's text (before = the baseline texts, after = the new one, each cut to
  200 characters; the text is untrusted and kept as data only).
- "finish_reason": e.g. "stop" became "length".
- "prompt_tokens": the same prompt is counted differently: a tokenizer change or a hidden
  system prompt.
Each clears when `revert_probes` answers in a row are back on the baseline, or when an answer
arrives `output_accept_after_ms` after the change (accepted: that value becomes the baseline).

Only the request currently sent is tracked: when the configuration changes it, the baseline
starts afresh and open conditions clear.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.detect.base import Detector, Warmup, clip, duration, ms, name
from monitor.detect.columns import Columns
from monitor.domain import DetectionThresholds, DriftEvent, DriftKind, Observation, Severity

# A few variants seen while learning are tolerated (a seed is best effort); more would mean
# the canary is not deterministic at all, and would only grow the state.
MAX_VARIANTS = 4


def _content(obs: Observation) -> tuple[str, Any]:
    if obs.content is None:
        return "null", None
    # Compared by digest, shown by a preview: the state stays small whatever the model says.
    return hashlib.sha256(obs.content.encode()).hexdigest(), clip(obs.content)


def _finish_reason(obs: Observation) -> tuple[str, Any]:
    value = None if obs.finish_reason is None else clip(obs.finish_reason)
    return str(value), value


def _prompt_tokens(obs: Observation) -> tuple[str, Any]:
    return str(obs.prompt_tokens), obs.prompt_tokens


# condition key -> (what it is called, how to read (identity, shown value) from an observation)
FIELDS: dict[str, tuple[str, Callable[[Observation], tuple[str, Any]]]] = {
    "content": ("answer", _content),
    "finish_reason": ("finish_reason", _finish_reason),
    "prompt_tokens": ("prompt token count", _prompt_tokens),
}


@dataclass
class Baseline:
    variants: dict[str, Any] = field(default_factory=dict)  # identity -> value shown in events
    back: int = 0  # answers in a row back on the baseline while a condition is open


class OutputDetector(Detector):
    kind = DriftKind.OUTPUT
    severities = (Severity.WARNING,)

    def __init__(self, target: str, thresholds: DetectionThresholds) -> None:
        super().__init__(target, thresholds)
        self.request_hash: str | None = None
        self.baselines = {key: Baseline() for key in FIELDS}

    def step(self, obs: Observation) -> list[DriftEvent]:
        if not obs.ok or not obs.deterministic:
            return []
        events = []
        if obs.request_hash != self.request_hash:
            events += self._start_over(obs)
        learning = self.learned < self.thresholds.warmup_probes
        if learning:
            self.learned += 1
        for key, (label, read) in FIELDS.items():
            identity, value = read(obs)
            baseline = self.baselines[key]
            if learning:
                if len(baseline.variants) < MAX_VARIANTS:
                    baseline.variants.setdefault(identity, value)
            else:
                events += self._compare(key, label, identity, value, obs)
        return events

    def fold(self, columns: Columns) -> list[tuple[int, DriftEvent]]:
        events: list[tuple[int, DriftEvent]] = []
        warmup = self.thresholds.warmup_probes
        # The raw (request, content, finish_reason, prompt_tokens) of answers that step would
        # find on every baseline with nothing open and nothing to learn: they change nothing
        # (no digest worked out again for the same text every minute).
        steady: set[tuple[str, str | None, str | None, int | None]] = set()
        for i, (ok, deterministic, request, content, finish_reason, prompt_tokens) in enumerate(
                zip(columns.ok, columns.deterministic, columns.request_hash, columns.content,
                    columns.finish_reason, columns.prompt_tokens, strict=True)):
            if not ok or not deterministic:
                continue
            answer = (request, content, finish_reason, prompt_tokens)
            if answer in steady:
                continue
            settled = self.learned >= warmup and request == self.request_hash
            obs = columns.observation(i)
            stepped = self.step(obs)
            events += [(i, event) for event in stepped]
            # What the answers in `steady` were found against may have moved.
            if stepped or not settled or self.conditions.active():
                steady.clear()
            if not self.conditions.active() and self.learned >= warmup and all(
                    read(obs)[0] in self.baselines[key].variants
                    for key, (_, read) in FIELDS.items()):
                steady.add(answer)
        return events

    def _compare(
        self, key: str, label: str, identity: str, value: Any, obs: Observation
    ) -> list[DriftEvent]:
        baseline = self.baselines[key]
        opening = self.conditions.get(key)
        if identity in baseline.variants:
            return self.conditions.close_when_back(
                key, obs, baseline, self.thresholds.revert_probes, after=value,
                explanation=lambda back: f"{self.target}'s {label} for its deterministic "
                f"request is back to the baseline ({back} answers in a row).",
            )
        baseline.back = 0
        if opening is None:
            return [self.conditions.open(
                key, obs, Severity.WARNING, before=list(baseline.variants.values()), after=value,
                uids=[obs.uid], explanation=self._changed(key, baseline, value),
            )]
        accept_ms = self.thresholds.output_accept_after_ms
        if ms(obs.started_at) - ms(opening.at) < accept_ms:
            return []
        baseline.variants = {identity: value}
        return [self.conditions.close(
            key, obs, before=opening.before, after=value, uids=[*opening.probe_uids, obs.uid],
            explanation=f"{self.target}'s {label} for its deterministic request has differed "
            f"from the baseline for {duration(accept_ms)}; the current one is accepted as the "
            "new baseline.",
        )]

    def _changed(self, key: str, baseline: Baseline, value: Any) -> str:
        known = list(baseline.variants.values())
        if key == "prompt_tokens":
            return (
                f"{self.target}'s identical request is now counted as {value} prompt tokens "
                f"instead of {' or '.join(map(str, known))}: a tokenizer change or a hidden "
                "system prompt."
            )
        if key == "finish_reason":
            return (
                f"{self.target}'s deterministic request now finishes with {name(value)} "
                f"instead of {' or '.join(name(v) for v in known)}."
            )
        return (
            f"{self.target} gave a different answer to its deterministic request (temperature 0, "
            "fixed seed) than the one it gave while its baseline was learned."
        )

    def _start_over(self, obs: Observation) -> list[DriftEvent]:
        """The request changed: answers to the old one say nothing about the new one."""
        events = [
            self.conditions.close(
                opening.key, obs, before=opening.after, after=None, uids=[obs.uid],
                explanation=f"{self.target}'s canary request changed, so its answers are "
                "compared afresh.",
            )
            for opening in self.conditions.active()
        ]
        self.request_hash = obs.request_hash
        self.learned = 0
        self.baselines = {key: Baseline() for key in FIELDS}
        return events

    def warmups(self) -> list[Warmup]:
        if not self.learned:
            return []  # no deterministic answer yet: an ordinary canary has none to learn
        return self.learning("canary answer", self.learned, self.thresholds.warmup_probes)

    def dump(self) -> dict[str, Any]:
        return {
            "request_hash": self.request_hash,
            "learned": self.learned,
            # Spelled out, not asdict(): its deep copy was a tenth of a live step's CPU, and
            # the snapshot is packed at once (values are replaced, never changed in place).
            "baselines": {key: {"variants": dict(baseline.variants), "back": baseline.back}
                          for key, baseline in self.baselines.items()},
        }

    def load(self, state: dict[str, Any]) -> None:
        self.request_hash = state["request_hash"]
        self.learned = state["learned"]
        self.baselines = {key: Baseline(**value) for key, value in state["baselines"].items()}
