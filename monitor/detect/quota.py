"""Quota drift, read from the x-ratelimit-* headers and from 429 answers.

Conditions (key):
- "limit_requests", "limit_tokens" (warning): the limit header differs from its baseline (the
  value the first `warmup_probes` probes carrying it sent). Clears when `revert_probes` probes in
  a row send the baseline again, or when one arrives `quota_accept_after_ms` after the change
  (accepted: the value then sent becomes the baseline).
- "remaining_requests", "remaining_tokens" (info): what is left in the window is under
  `quota_remaining_fraction` of the limit. Clears when it is back above twice that fraction, so
  usage hovering at the threshold does not flap. Info only: it is usually the organisation's own
  traffic, and "rate_limited" follows if it becomes a problem.
- "rate_limited" (warning): `quota_rate_limited_probes` of the last `quota_rate_limited_window`
  probes were answered 429. Clears after `revert_probes` probes in a row without a 429.

Headers a server does not send (Azure sends no limits, most compatible servers none at all) are
simply absent, never a change. Only successful answers are read for limits and remaining: a 429
says 0 remaining by definition, which is rate_limited's business.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from monitor.detect.base import MAX_UIDS, Detector, Warmup, duration, ms
from monitor.detect.columns import Columns
from monitor.domain import (
    DetectionThresholds,
    DriftEvent,
    DriftKind,
    ErrorKind,
    Observation,
    RateLimits,
    Severity,
)

# limit -> the remaining count it bounds, and what it counts. OpenAI's x-ratelimit-* headers
# and Anthropic's anthropic-ratelimit-{requests,tokens}-* fill the first two; only Anthropic
# sends the input and output token limits (probe/anthropic.py maps its headers).
HEADERS = {
    "limit_requests": ("remaining_requests", "requests"),
    "limit_tokens": ("remaining_tokens", "tokens"),
    "limit_input_tokens": ("remaining_input_tokens", "input tokens"),
    "limit_output_tokens": ("remaining_output_tokens", "output tokens"),
}


@dataclass
class Limit:
    learned: int = 0
    baseline: int | None = None
    back: int = 0  # probes in a row sending the baseline while a condition is open


class QuotaDetector(Detector):
    kind = DriftKind.QUOTA
    severities = (Severity.WARNING, Severity.INFO)

    def __init__(self, target: str, thresholds: DetectionThresholds) -> None:
        super().__init__(target, thresholds)
        self.limits = {header: Limit() for header in HEADERS}
        self.throttled: deque[bool] = deque(maxlen=thresholds.quota_rate_limited_window)
        self.throttled_uids: deque[str] = deque(maxlen=MAX_UIDS)
        self.calm = 0  # probes in a row without a 429

    def step(self, obs: Observation) -> list[DriftEvent]:
        learning = self.learned < self.thresholds.warmup_probes
        if learning:
            self.learned += 1
        events = self._rate_limited(obs, learning)
        if obs.ok:
            for header in HEADERS:
                value = getattr(obs.rate_limits, header)
                if value is not None:
                    events += self._limit(header, value, obs)
                if not learning:
                    events += self._remaining(header, obs.rate_limits, obs)
        return events

    def fold(self, columns: Columns) -> list[tuple[int, DriftEvent]]:
        events: list[tuple[int, DriftEvent]] = []
        fraction = self.thresholds.quota_remaining_fraction
        # Each probe's limits and what remains of them, in HEADERS' order (transposed in C).
        sent = list(zip(*(columns.limits[header] for header in HEADERS), strict=True))
        left = list(zip(*(columns.limits[key] for key, _ in HEADERS.values()), strict=True))
        throttled = self.throttled
        # The last limits found on their baselines (or not sent), and the last remaining
        # counts found above their thresholds under them: step learns and opens nothing.
        steady: tuple[Any, ...] | None = None
        enough: tuple[Any, ...] | None = None
        settled = self._settled()
        for i, (ok, kind) in enumerate(zip(columns.ok, columns.error_kind, strict=True)):
            if settled and kind != ErrorKind.RATE_LIMITED:
                if not ok:
                    throttled.append(False)
                    self.calm += 1
                    continue
                limits, remaining = sent[i], left[i]
                if limits != steady and self._on_baselines(limits):
                    steady, enough = limits, None
                if limits == steady and (remaining == enough or not any(
                        limit is not None and value is not None and limit > 0
                        and value < fraction * limit
                        for limit, value in zip(limits, remaining, strict=True))):
                    # Nothing to learn or open, no 429: only the window moves.
                    enough = remaining
                    throttled.append(False)
                    self.calm += 1
                    continue
            self.step_at(columns, i, events)
            settled = self._settled()
            steady = enough = None
        return events

    def _settled(self) -> bool:
        """Whether a probe that is no 429 may only move the window of 429s."""
        return self.learned >= self.thresholds.warmup_probes and not self.conditions.active()

    def _on_baselines(self, limits: tuple[int | float | None, ...]) -> bool:
        return all(value is None or (limit.learned >= self.thresholds.warmup_probes
                                     and value == limit.baseline)
                   for value, limit in zip(limits, self.limits.values(), strict=True))

    def _limit(self, header: str, value: int, obs: Observation) -> list[DriftEvent]:
        limit = self.limits[header]
        # In words: OpenAI's and Anthropic's headers for it have different names.
        label = f"{HEADERS[header][1][:-1]} limit"
        if limit.learned < self.thresholds.warmup_probes:
            limit.learned += 1
            limit.baseline = value
            return []
        opening = self.conditions.get(header)
        if value == limit.baseline:
            return self.conditions.close_when_back(
                header, obs, limit, self.thresholds.revert_probes, after=value,
                explanation=lambda _: f"{self.target}'s {label} is back to {value}.",
            )
        limit.back = 0
        if opening is None:
            return [self.conditions.open(
                header, obs, Severity.WARNING, before=limit.baseline, after=value, uids=[obs.uid],
                explanation=f"{self.target}'s {label} changed from {limit.baseline} to {value}.",
            )]
        accept_ms = self.thresholds.quota_accept_after_ms
        if ms(obs.started_at) - ms(opening.at) < accept_ms:
            return []
        limit.baseline = value
        return [self.conditions.close(
            header, obs, before=opening.before, after=value, uids=[*opening.probe_uids, obs.uid],
            explanation=f"{self.target}'s {label} has differed from {opening.before} for "
            f"{duration(accept_ms)}; {value} is accepted as the new baseline.",
        )]

    def _remaining(self, header: str, limits: RateLimits, obs: Observation) -> list[DriftEvent]:
        key, unit = HEADERS[header]
        limit, remaining = getattr(limits, header), getattr(limits, key)
        if limit is None or remaining is None or limit <= 0:
            return []
        fraction = self.thresholds.quota_remaining_fraction
        opening = self.conditions.get(key)
        if opening is None and remaining < fraction * limit:
            return [self.conditions.open(
                key, obs, Severity.INFO,
                before={"limit": limit, "min_remaining": round(fraction * limit)},
                after={"limit": limit, "remaining": remaining}, uids=[obs.uid],
                explanation=f"{self.target} had only {remaining} of {limit} {unit} left in its "
                f"rate-limit window, under {fraction:.0%}.",
            )]
        if opening is not None and remaining >= 2 * fraction * limit:
            return [self.conditions.close(
                key, obs, before=opening.after, after={"limit": limit, "remaining": remaining},
                uids=[obs.uid],
                explanation=f"{self.target} has {remaining} of {limit} {unit} left again.",
            )]
        return []

    def _rate_limited(self, obs: Observation, learning: bool) -> list[DriftEvent]:
        throttled = obs.error_kind == ErrorKind.RATE_LIMITED
        self.throttled.append(throttled)
        if throttled:
            self.throttled_uids.append(obs.uid)
            self.calm = 0
        else:
            self.calm += 1
        opening = self.conditions.get("rate_limited")
        count = sum(self.throttled)
        window = len(self.throttled)
        # Opening only on a 429 itself: the window still holds old 429s after a clear.
        if (
            opening is None
            and throttled
            and not learning
            and count >= self.thresholds.quota_rate_limited_probes
        ):
            return [self.conditions.open(
                "rate_limited", obs, Severity.WARNING,
                before={"max_rate_limited": self.thresholds.quota_rate_limited_probes - 1},
                after={"rate_limited": count, "of_last": window}, uids=self.throttled_uids,
                explanation=f"{self.target} was rate limited (HTTP 429) on {count} of its last "
                f"{window} probes.",
            )]
        if opening is not None and self.calm >= self.thresholds.revert_probes:
            return [self.conditions.close(
                "rate_limited", obs, before=opening.after,
                after={"rate_limited": count, "of_last": window}, uids=[obs.uid],
                explanation=f"{self.target} has had no 429 for {self.calm} probes in a row.",
            )]
        return []

    def warmups(self) -> list[Warmup]:
        needed = self.thresholds.warmup_probes
        found = self.learning("quota", self.learned, needed)
        for header, limit in self.limits.items():
            if limit.learned:  # a header never sent has no baseline to learn
                found += self.learning(f"{HEADERS[header][1][:-1]} limit", limit.learned, needed)
        return found

    def dump(self) -> dict[str, Any]:
        return {
            "learned": self.learned,
            "limits": {header: vars(limit).copy() for header, limit in self.limits.items()},
            "throttled": list(self.throttled),
            "throttled_uids": list(self.throttled_uids),
            "calm": self.calm,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.learned = state["learned"]
        # A state saved before a limit was watched lacks it: that limit starts learning.
        self.limits.update({header: Limit(**limit) for header, limit in state["limits"].items()})
        self.throttled.extend(state["throttled"])
        self.throttled_uids.extend(state["throttled_uids"])
        self.calm = state["calm"]
