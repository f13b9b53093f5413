"""Quality drift: the answers pass their checks less often than they did.

A probe counts when it succeeded and at least one of its target's checks applied to it; it
passes when every applicable check passed. Failed probes are availability's business.

Condition (key "pass_rate"), warning: the last `quality_recent_probes` counted probes against
the up to `quality_baseline_probes` before them (at least `quality_baseline_min_probes`). Opens
on a failing probe when a one-sided Fisher exact test says the recent window fails more often
than the baseline with p < `quality_p_value` AND its pass rate is at least `quality_min_drop`
below the baseline's. While it is open the baseline is frozen, so failing answers never become
the baseline. Clears once the test is nowhere near significance (p >= `quality_clear_p_value`).
before = the baseline's pass rate and its usual fingerprint and model; after = the recent pass
rate, the failing checks with counts, an example failing answer (cut, kept as data only) with
its reasons, and the fingerprint and model that gave it.

When the target's set of checks changes, its answers are judged afresh: the baseline starts
over and an open condition clears.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from monitor.detect.base import Detector, Warmup, clip, name
from monitor.detect.columns import Columns
from monitor.detect.stats import fisher_more_failures
from monitor.domain import (
    CheckOutcome,
    DetectionThresholds,
    DriftEvent,
    DriftKind,
    Observation,
    Severity,
)

# An example answer quoted in an explanation sentence.
EXAMPLE_CHARS = 80


def _most_common(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0] if values else None


def _quote(text: str | None) -> str:
    """Model output as it reads in a sentence: quoted, escaped (Python string syntax, so a
    newline or a control character cannot break the line) and cut."""
    return "no text" if text is None else repr(clip(text, EXAMPLE_CHARS))


class QualityDetector(Detector):
    kind = DriftKind.QUALITY
    severities = (Severity.WARNING,)

    def __init__(self, target: str, thresholds: DetectionThresholds) -> None:
        super().__init__(target, thresholds)
        self.checks: list[str] | None = None  # the names of the checks judged so far
        # [uid, passed, {failed check: reason}, content (failing probes only), fp, model]
        self.recent: deque[list[Any]] = deque(maxlen=thresholds.quality_recent_probes)
        # [passed, fingerprint, model]
        self.baseline: deque[list[Any]] = deque(maxlen=thresholds.quality_baseline_probes)
        # The failing entries of each window, kept as they change: counting them again at
        # every probe was most of this detector's cost.
        self.base_failed = 0
        self.recent_failed = 0

    def step(self, obs: Observation) -> list[DriftEvent]:
        applied = [c for c in obs.checks if c.outcome is not CheckOutcome.NOT_APPLICABLE]
        if not obs.ok or not applied:
            return []
        events = []
        names = sorted(c.check for c in obs.checks)
        if names != self.checks:
            events += self._start_over(obs, names)
        failed = {c.check: c.reason for c in applied if c.outcome is CheckOutcome.FAIL}
        if len(self.recent) == self.thresholds.quality_recent_probes and not self._suspect():
            _, passed, _, _, fingerprint, model = self.recent[0]
            if len(self.baseline) == self.baseline.maxlen and not self.baseline[0][0]:
                self.base_failed -= 1
            self.baseline.append([passed, fingerprint, model])
            self.base_failed += not passed
        if len(self.recent) == self.recent.maxlen and not self.recent[0][1]:
            self.recent_failed -= 1
        self.recent.append([obs.uid, not failed, failed, obs.content if failed else None,
                            obs.system_fingerprint, obs.model])
        self.recent_failed += bool(failed)
        self.learned = min(self.learned + 1, self._needed())
        if (len(self.recent) < self.thresholds.quality_recent_probes
                or len(self.baseline) < self.thresholds.quality_baseline_min_probes):
            return events
        return events + self._compare(obs, bool(failed))

    def fold(self, columns: Columns) -> list[tuple[int, DriftEvent]]:
        events: list[tuple[int, DriftEvent]] = []
        for i, (ok, checks) in enumerate(zip(columns.ok, columns.checks, strict=True)):
            if ok and checks:  # else no check applied: step returns at once
                self.step_at(columns, i, events)
        return events

    def _suspect(self) -> bool:
        """Open, or the recent window already fails suspiciously often: its answers stay out
        of the baseline until that is settled, or a drop would slowly become the baseline
        before the test could tell it."""
        if self.conditions.is_open("pass_rate"):
            return True
        if len(self.baseline) < self.thresholds.quality_baseline_min_probes:
            return False
        return self._rates()[4] < self.thresholds.quality_clear_p_value

    def _needed(self) -> int:
        t = self.thresholds
        return t.quality_recent_probes + t.quality_baseline_min_probes

    def _rates(self) -> tuple[int, int, float, float, float]:
        """(baseline failures, recent failures, baseline pass rate, recent pass rate, p)"""
        base_failed, recent_failed = self.base_failed, self.recent_failed
        p = fisher_more_failures(base_failed, len(self.baseline), recent_failed,
                                 len(self.recent))
        return (base_failed, recent_failed, 1 - base_failed / len(self.baseline),
                1 - recent_failed / len(self.recent), p)

    def _compare(self, obs: Observation, failed: bool) -> list[DriftEvent]:
        t = self.thresholds
        opening = self.conditions.get("pass_rate")
        if opening is None and not failed:
            return []
        _, recent_failed, base_rate, recent_rate, p = self._rates()
        if opening is None:
            if p >= t.quality_p_value or base_rate - recent_rate < t.quality_min_drop:
                return []
            return [self._open(obs, recent_failed, base_rate, recent_rate)]
        if p < t.quality_clear_p_value:
            return []
        return [self.conditions.close(
            "pass_rate", obs, before=opening.after,
            after={"pass_rate": round(recent_rate, 3), "n": len(self.recent)}, uids=[obs.uid],
            explanation=f"{self.target}'s answers pass their checks again: {recent_rate:.0%} "
            f"of the last {len(self.recent)}, against {base_rate:.0%} before they got worse.",
        )]

    def _open(self, obs: Observation, recent_failed: int, base_rate: float,
              recent_rate: float) -> DriftEvent:
        failing: Counter[str] = Counter()
        for entry in self.recent:
            failing.update(entry[2].keys())
        bad = [entry for entry in self.recent if not entry[1]]
        example = bad[-1]
        before = {
            "pass_rate": round(base_rate, 3), "n": len(self.baseline),
            "system_fingerprint": _most_common([fp for _, fp, _ in self.baseline]),
            "model": _most_common([model for _, _, model in self.baseline]),
        }
        after = {
            "pass_rate": round(recent_rate, 3), "n": len(self.recent),
            "failing": dict(failing.most_common()),
            "example": {"content": None if example[3] is None else clip(example[3]),
                        "reasons": {check: None if reason is None else clip(reason)
                                    for check, reason in example[2].items()}},
            "system_fingerprint": _most_common([entry[4] for entry in bad]),
            "model": _most_common([entry[5] for entry in bad]),
        }
        checks = ", ".join(f"{name(check)} {count}" for check, count in failing.most_common())
        return self.conditions.open(
            "pass_rate", obs, Severity.WARNING, before=before, after=after,
            uids=[entry[0] for entry in bad],
            explanation=f"{self.target}'s answers got worse: {recent_failed} of the last "
            f"{len(self.recent)} failed their checks ({checks}), against "
            f"{1 - base_rate:.0%} of the {len(self.baseline)} before. "
            f"{name(after['system_fingerprint'])} ({name(after['model'])}) answered "
            f"{_quote(example[3])}; before: {name(before['system_fingerprint'])} "
            f"({name(before['model'])}).",
        )

    def _start_over(self, obs: Observation, names: list[str]) -> list[DriftEvent]:
        """The checks changed: answers judged by the old ones say nothing of the new ones."""
        events = [
            self.conditions.close(
                opening.key, obs, before=opening.after, after=None, uids=[obs.uid],
                explanation=f"{self.target}'s checks changed, so its answers are judged "
                "afresh.",
            )
            for opening in self.conditions.active()
        ]
        self.checks = names
        self.learned = 0
        self.recent.clear()
        self.baseline.clear()
        self.base_failed = self.recent_failed = 0
        return events

    def warmups(self) -> list[Warmup]:
        if self.checks is None:
            return []  # a target without checks has no pass rate to learn
        return self.learning("pass rate baseline", self.learned, self._needed())

    def dump(self) -> dict[str, Any]:
        return {"learned": self.learned, "checks": self.checks, "recent": list(self.recent),
                "baseline": list(self.baseline)}

    def load(self, state: dict[str, Any]) -> None:
        self.learned = state["learned"]
        self.checks = state["checks"]
        self.recent.extend(state["recent"])
        self.baseline.extend(state["baseline"])
        self.base_failed = sum(1 for passed, _, _ in self.baseline if not passed)
        self.recent_failed = sum(1 for entry in self.recent if not entry[1])
