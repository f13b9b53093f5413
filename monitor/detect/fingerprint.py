"""system_fingerprint drift: a backend never seen before, one gone for good, or a shifted mix.

Conditions (key):
- "new:<fp>" (warning): a fingerprint outside the known pool answered. Clears when it has not
  answered for `fingerprint_revert_probes` fingerprinted probes (reverted), or when it answers
  `fingerprint_accept_after_ms` after it first did (accepted: it joins the pool).
- "retired:<fp>" (info): a known fingerprint has not answered for `fingerprint_retired_after_ms`.
  Clears when it answers again, or after another `fingerprint_accept_after_ms` (it leaves the
  pool, and answering later would make it new).
- "share" (info): the mix among known fingerprints moved: the last `fingerprint_share_recent`
  probes against the `fingerprint_share_window` before them differ by a chi-square p-value under
  `fingerprint_share_p_value` and by at least `fingerprint_share_min_change` in one share. The
  baseline freezes while it is open; clears when no share differs by half that any more, or
  after `fingerprint_accept_after_ms` (accepted: the baseline refills from new probes).

Alternation inside the pool (load-balanced backends) is never a condition by itself. Probes
without a fingerprint (failed, or a server that sends none) are not looked at.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from monitor.detect.base import Detector, Warmup, clip, duration, ms, name
from monitor.detect.columns import Columns
from monitor.detect.stats import homogeneity_p_value
from monitor.domain import DetectionThresholds, DriftEvent, DriftKind, Observation, Severity

# A server that invents a fingerprint per answer would otherwise open a condition per probe
# and grow this state without bound.
MAX_NEW = 8


def _pool(prints: Any) -> str:
    return ", ".join(name(fp) for fp in sorted(prints)) or "none"


class FingerprintDetector(Detector):
    kind = DriftKind.FINGERPRINT
    severities = (Severity.WARNING, Severity.INFO)

    def __init__(self, target: str, thresholds: DetectionThresholds) -> None:
        super().__init__(target, thresholds)
        self.known: dict[str, int] = {}  # the pool: fingerprint -> last answered (ms)
        self.unseen: dict[str, int] = {}  # open "new:" fingerprints -> probes since they answered
        self.recent: deque[tuple[str, str]] = deque(maxlen=thresholds.fingerprint_share_recent)
        self.baseline: deque[str] = deque(maxlen=thresholds.fingerprint_share_window)
        self.recent_counts: Counter[str] = Counter()
        self.baseline_counts: Counter[str] = Counter()

    def step(self, obs: Observation) -> list[DriftEvent]:
        fp = obs.system_fingerprint
        if not obs.ok or fp is None:
            return []
        fp = clip(fp)
        now = ms(obs.started_at)
        if self.learned < self.thresholds.fingerprint_warmup_probes:
            self.learned += 1
            self.known[fp] = now
            self._count(fp, obs.uid, frozen=False)
            return []
        events: list[DriftEvent] = []
        if fp in self.known:
            self.known[fp] = now
            if self.conditions.is_open(f"retired:{fp}"):
                events.append(self._come_back(fp, obs))
        else:
            events += self._sight_new(fp, obs, now)
        events += self._forget_reverted(fp, obs)
        events += self._retire(obs, now)
        if fp in self.known:
            events += self._share(fp, obs, now)
        return events

    def fold(self, columns: Columns) -> list[tuple[int, DriftEvent]]:
        events: list[tuple[int, DriftEvent]] = []
        t = self.thresholds
        known, recent, baseline = self.known, self.recent, self.baseline
        recent_counts, baseline_counts = self.recent_counts, self.baseline_counts
        retired_after_ms, min_change = t.fingerprint_retired_after_ms, t.fingerprint_share_min_change
        # The windows' sizes when full (the share test runs only then).
        recent_size, base_size = t.fingerprint_share_recent, t.fingerprint_share_window
        settled = self._settled()
        # No known fingerprint answered before this (stamps only grow while settled): while
        # `now` is under `retired_after_ms` past it, none can retire.
        oldest = min(known.values(), default=0)
        # The largest change in a share, kept while the counts stay (None: work it out).
        change: float | None = None
        uids = columns.uid
        for i, (ok, fp) in enumerate(zip(columns.ok, columns.system_fingerprint, strict=True)):
            if not ok or fp is None:
                continue
            # A known fingerprint (kept clipped: a raw one found among them is its own clip)
            # with nothing open: step only stamps it, counts it, and tests the mix.
            if not settled or fp not in known:
                self.step_at(columns, i, events)
                settled, oldest, change = self._settled(), min(known.values(), default=0), None
                continue
            now = columns.started_ms[i]
            known[fp] = now  # as step does first (so stepping after it is the same)
            if now - oldest >= retired_after_ms:
                oldest = min(known.values())
                if now - oldest >= retired_after_ms:
                    self.step_at(columns, i, events)
                    settled, oldest, change = self._settled(), min(known.values(), default=0), None
                    continue
            # self._count(fp, uid, frozen=False) in line, the counts moved only where the
            # probes going in and out differ
            if len(recent) == recent_size:
                old = recent[0][0]
                if old != fp:
                    _decrement(recent_counts, old)
                    recent_counts[fp] += 1
                    change = None
                if len(baseline) == base_size:
                    gone = baseline[0]
                    if gone != old:
                        _decrement(baseline_counts, gone)
                        baseline_counts[old] += 1
                        change = None
                else:
                    baseline_counts[old] += 1
                    change = None
                baseline.append(old)
            else:
                recent_counts[fp] += 1
                change = None
            recent.append((fp, uids[i]))
            if len(known) < 2 or len(recent) < recent_size or len(baseline) < base_size:
                continue
            if change is None:
                # The largest change in a share, as _judge_share works it out (without
                # building the shares): under the change that matters, no test and no event.
                change = 0.0
                for p, count in recent_counts.items():
                    change = max(change, abs(count / recent_size - baseline_counts[p] / base_size))
                for p, count in baseline_counts.items():
                    if p not in recent_counts:
                        change = max(change, abs(0 / recent_size - count / base_size))
            if change >= min_change:
                for event in self._judge_share(columns.observation(i), now):
                    events.append((i, event))
                settled, oldest, change = self._settled(), min(known.values(), default=0), None
        return events

    def _settled(self) -> bool:
        """Whether a known fingerprint needs no more than stamping, counting and the test."""
        return (self.learned >= self.thresholds.fingerprint_warmup_probes and not self.unseen
                and not self.conditions.active())

    # --- new fingerprints ---------------------------------------------------------------

    def _sight_new(self, fp: str, obs: Observation, now: int) -> list[DriftEvent]:
        key = f"new:{fp}"
        opening = self.conditions.get(key)
        if opening is None:
            if len(self.unseen) >= MAX_NEW:
                return []
            self.unseen[fp] = 0
            return [self.conditions.open(
                key, obs, Severity.WARNING, before=sorted(self.known), after=fp, uids=[obs.uid],
                explanation=f"{self.target} started answering with system_fingerprint {name(fp)}, "
                f"never seen before for this target (known: {_pool(self.known)}).",
            )]
        self.unseen[fp] = 0
        accept_ms = self.thresholds.fingerprint_accept_after_ms
        if now - ms(opening.at) < accept_ms:
            return []
        del self.unseen[fp]
        self.known[fp] = now
        self._restart_share()
        return [self.conditions.close(
            key, obs, before=opening.before, after=sorted(self.known),
            uids=[*opening.probe_uids, obs.uid],
            explanation=f"{self.target}'s system_fingerprint {name(fp)} has been answering for "
            f"{duration(accept_ms)} and is accepted into the known pool.",
        )]

    def _forget_reverted(self, fp: str, obs: Observation) -> list[DriftEvent]:
        events = []
        for other in list(self.unseen):
            if other == fp:
                continue
            self.unseen[other] += 1
            if self.unseen[other] < self.thresholds.fingerprint_revert_probes:
                continue
            del self.unseen[other]
            events.append(self.conditions.close(
                f"new:{other}", obs, before=other, after=sorted(self.known), uids=[obs.uid],
                explanation=f"{self.target}'s system_fingerprint {name(other)} has not answered "
                f"the last {self.thresholds.fingerprint_revert_probes} probes, so the change "
                "looks reverted.",
            ))
        return events

    # --- retired fingerprints -----------------------------------------------------------

    def _retire(self, obs: Observation, now: int) -> list[DriftEvent]:
        events = []
        for fp, last in list(self.known.items()):
            key = f"retired:{fp}"
            opening = self.conditions.get(key)
            if opening is None:
                after_ms = self.thresholds.fingerprint_retired_after_ms
                if now - last >= after_ms:
                    events.append(self.conditions.open(
                        key, obs, Severity.INFO, before=sorted(self.known),
                        after=sorted(set(self.known) - {fp}), uids=[obs.uid],
                        explanation=f"{self.target}'s system_fingerprint {name(fp)} has not "
                        f"answered for {duration(after_ms)}; it was part of the known pool.",
                    ))
            elif now - ms(opening.at) >= self.thresholds.fingerprint_accept_after_ms:
                del self.known[fp]
                self._restart_share()
                events.append(self.conditions.close(
                    key, obs, before=opening.before, after=sorted(self.known), uids=[obs.uid],
                    explanation=f"{self.target}'s system_fingerprint {name(fp)} stayed away for "
                    "another "
                    f"{duration(self.thresholds.fingerprint_accept_after_ms)} and is dropped "
                    "from the known pool.",
                ))
        return events

    def _come_back(self, fp: str, obs: Observation) -> DriftEvent:
        opening = self.conditions.get(f"retired:{fp}")
        assert opening is not None
        return self.conditions.close(
            f"retired:{fp}", obs, before=opening.after, after=sorted(self.known), uids=[obs.uid],
            explanation=f"{self.target}'s system_fingerprint {name(fp)} is answering again.",
        )

    # --- share among the pool -----------------------------------------------------------

    def _count(self, fp: str, uid: str, *, frozen: bool) -> None:
        """Add a probe to the recent window; the one it pushes out joins the baseline window,
        unless the baseline is frozen (a shifted mix must not become the baseline)."""
        if len(self.recent) == self.recent.maxlen:
            old = self.recent[0][0]
            _decrement(self.recent_counts, old)
            if not frozen:
                if len(self.baseline) == self.baseline.maxlen:
                    _decrement(self.baseline_counts, self.baseline[0])
                self.baseline.append(old)
                self.baseline_counts[old] += 1
        self.recent.append((fp, uid))
        self.recent_counts[fp] += 1

    def _restart_share(self) -> None:
        """The pool changed, so shares measured over the old pool compare nothing."""
        self.recent.clear()
        self.baseline.clear()
        self.recent_counts.clear()
        self.baseline_counts.clear()

    def _share(self, fp: str, obs: Observation, now: int) -> list[DriftEvent]:
        opening = self.conditions.get("share")
        full = len(self.baseline) == self.baseline.maxlen
        self._count(fp, obs.uid, frozen=opening is not None and full)
        return self._judge_share(obs, now)

    def _judge_share(self, obs: Observation, now: int) -> list[DriftEvent]:
        """The share test, once the probe is counted."""
        opening = self.conditions.get("share")
        accept_ms = self.thresholds.fingerprint_accept_after_ms
        if opening is not None and now - ms(opening.at) >= accept_ms:
            self.baseline.clear()
            self.baseline_counts.clear()
            return [self.conditions.close(
                "share", obs, before=opening.before, after=opening.after, uids=[obs.uid],
                explanation=f"{self.target}'s new mix of fingerprints has lasted "
                f"{duration(accept_ms)} and is accepted as the new baseline.",
            )]
        if (
            len(self.known) < 2
            or len(self.recent) < self.thresholds.fingerprint_share_recent
            or len(self.baseline) < self.thresholds.fingerprint_share_window
        ):
            return []
        prints = sorted(set(self.recent_counts) | set(self.baseline_counts))
        before = {p: self.baseline_counts[p] / len(self.baseline) for p in prints}
        after = {p: self.recent_counts[p] / len(self.recent) for p in prints}
        change = max(abs(after[p] - before[p]) for p in prints)
        min_change = self.thresholds.fingerprint_share_min_change

        def described() -> str:  # only when an event is made: this runs at every probe
            shares = ", ".join(f"{name(p)} {before[p]:.0%} -> {after[p]:.0%}" for p in prints)
            return (f"{shares} (the last {len(self.recent)} probes against the "
                    f"{len(self.baseline)} before)")

        if opening is None:
            if change < min_change or homogeneity_p_value(
                [self.baseline_counts[p] for p in prints], [self.recent_counts[p] for p in prints]
            ) >= self.thresholds.fingerprint_share_p_value:
                return []
            return [self.conditions.open(
                "share", obs, Severity.INFO, before=_rounded(before), after=_rounded(after),
                uids=[uid for _, uid in self.recent],
                explanation=f"{self.target}'s answers shifted between its known fingerprints: "
                f"{described()}.",
            )]
        if change >= min_change / 2:
            return []
        return [self.conditions.close(
            "share", obs, before=opening.after, after=_rounded(after),
            uids=[uid for _, uid in self.recent],
            explanation=f"{self.target}'s mix of fingerprints is back to its baseline: "
            f"{described()}.",
        )]

    # --- warm-up and snapshot -------------------------------------------------------------

    def warmups(self) -> list[Warmup]:
        t = self.thresholds
        if not self.learned:
            return []  # no fingerprint yet: a server that sends none has no pool to learn
        pool = self.learning("fingerprint pool", self.learned, t.fingerprint_warmup_probes)
        if pool or len(self.known) < 2:
            return pool  # one backend has no mix to shift
        # The share test runs once both windows are full (the baseline fills from the recent
        # window's overflow); a change of pool empties them.
        return self.learning("fingerprint mix", len(self.recent) + len(self.baseline),
                             t.fingerprint_share_recent + t.fingerprint_share_window)

    def dump(self) -> dict[str, Any]:
        return {
            "learned": self.learned,
            "known": self.known,
            "unseen": self.unseen,
            "recent": [list(pair) for pair in self.recent],
            "baseline": list(self.baseline),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.learned = state["learned"]
        self.known = dict(state["known"])
        self.unseen = dict(state["unseen"])
        self.recent.extend((fp, uid) for fp, uid in state["recent"])
        self.baseline.extend(state["baseline"])
        self.recent_counts = Counter(fp for fp, _ in self.recent)
        self.baseline_counts = Counter(self.baseline)


def _decrement(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if not counts[key]:
        del counts[key]


def _rounded(shares: dict[str, float]) -> dict[str, float]:
    return {fp: round(share, 3) for fp, share in shares.items()}
