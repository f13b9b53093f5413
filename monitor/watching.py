"""What the monitor is waiting for, per target, at a given moment: baselines its detectors are
still learning, a backoff after a 429, a spent daily budget, a maintenance window. Every reason
a target can be silent, read from the store and the configuration alone, so that any process
(`monitor status`, `monitor serve`, another daemon) tells the same story as the daemon probing.

The daemon's own rules for backing off and for daily budgets live here (`backoff_s`,
`budget_spent`): it applies them, this module reports them, and the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select

from monitor import defaults
from monitor.alerts.maintenance import maintenance_until
from monitor.detect import TargetDetector, Warmup
from monitor.domain import ErrorKind, Provider, RateLimits, Settings, Target
from monitor.store import history
from monitor.store.records import newest_probe, usage_since
from monitor.store.schema import targets

# --- the daemon's rules ---------------------------------------------------------------------


def backoff_s(retry_after_s: float | None, limits: RateLimits, interval_ms: int) -> float:
    """How long to leave a target alone after a 429: what the server said, else one interval."""
    for hint in (retry_after_s, limits.reset_requests_s, limits.reset_tokens_s):
        if hint is not None and hint > 0:
            return hint
    return interval_ms / 1000


def budget_spent(target: Target, requests_sent: int, tokens_used: int) -> str | None:
    """Why the target's daily budget forbids probing, given today's usage (UTC), or None."""
    budget = target.daily_request_budget
    if budget is not None and requests_sent >= budget:
        return f"daily request budget spent ({requests_sent} of {budget} requests today, UTC)"
    budget = target.daily_token_budget
    if budget is not None and tokens_used >= budget:
        return f"daily token budget spent ({tokens_used} of {budget} tokens today, UTC)"
    return None


def utc_day(now: datetime) -> datetime:
    """The start of `now`'s UTC day, from which daily budgets count."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


# --- the state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchState:
    """Why one target may be silent at one moment. `warmups` is None when the detectors have
    not folded its probes yet and there are too many to fold here (the daemon does it at the
    target's next probe)."""

    probed: bool  # any canary probe stored
    warmups: tuple[Warmup, ...] | None
    backoff_until: datetime | None
    budget_spent: str | None
    maintenance_until: datetime | None
    # Detectors that can never speak for this target, each with why (not silence by accident).
    not_applicable: tuple[str, ...] = ()

    def summary(self, now: datetime) -> str:
        """One line for people; "watching" when nothing is pending."""
        parts = []
        if self.backoff_until is not None:
            parts.append(f"backing off after HTTP 429 until {_when(self.backoff_until, now)}")
        if self.budget_spent is not None:
            parts.append(self.budget_spent)
        if self.maintenance_until is not None:
            parts.append(f"in maintenance until {_when(self.maintenance_until, now)}")
        if not self.probed:
            parts.append("waiting for its first probe")
        elif self.warmups is None:
            parts.append("detectors have not folded its stored probes yet (the daemon does "
                         "at its next probe)")
        elif self.warmups:
            parts.append(_learning(self.warmups))
        return "; ".join([*(parts or ["watching"]), *self.not_applicable])

    def to_json(self, now: datetime) -> dict[str, Any]:
        """The report's and `monitor status`'s `state` (docs/report.md)."""
        return {
            "summary": self.summary(now),
            "warmups": [{"baseline": w.baseline, "detector": w.detector, "seen": w.seen,
                         "needed": w.needed} for w in self.warmups or ()],
            "backoff_until": _iso(self.backoff_until),
            "budget_spent": self.budget_spent,
            "maintenance_until": _iso(self.maintenance_until),
        } | ({"not_applicable": list(self.not_applicable)} if self.not_applicable else {})


def _learning(warmups: Sequence[Warmup]) -> str:
    """The warm-up furthest from done, and how many others there are."""
    longest = max(warmups, key=lambda w: w.needed - w.seen)  # the first of equals
    line = f"learning {longest.baseline} ({longest.seen} of {longest.needed} probes)"
    others = len(warmups) - 1
    return line + (f" and {others} more baseline{'s' * (others > 1)}" if others else "")


def _when(at: datetime, now: datetime) -> str:
    """A whole-second UTC time, with the date only when it is not today's."""
    at, now = at.astimezone(UTC), now.astimezone(UTC)
    return at.strftime("%H:%M:%S UTC" if at.date() == now.date() else "%Y-%m-%d %H:%M:%S UTC")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


# --- reading it from the store --------------------------------------------------------------


def read_states(engine: Engine, settings: Settings, now: datetime) -> dict[str, WatchState]:
    """The state of every configured target at `now`, by name."""
    names = [target.name for target in settings.targets]
    with engine.connect() as connection:
        ids = {row.name: row.id for row in connection.execute(
            select(targets.c.name, targets.c.id).where(targets.c.name.in_(names)))}
        states = {}
        for target in settings.targets:
            target_id = ids.get(target.name)
            states[target.name] = _state(connection, engine, settings, target, target_id, now)
    return states


def _state(connection: Connection, engine: Engine, settings: Settings, target: Target,
           target_id: int | None, now: datetime) -> WatchState:
    maintenance = maintenance_until(settings.alerts.maintenance, target.name, now)
    if target_id is None:  # never probed: nothing stored under its name yet
        fresh = TargetDetector(target.name, target.detection).warmups()
        return WatchState(False, tuple(fresh), None, _budget(engine, target, None, now),
                          maintenance, not_applicable(target))
    newest = newest_probe(connection, target_id)
    backoff = None
    if newest is not None and newest.error_kind == ErrorKind.RATE_LIMITED:
        # The daemon waits from the 429's own time (its `now`, the probe's started_at).
        until = newest.started_at + timedelta(seconds=backoff_s(
            newest.retry_after_s, newest.rate_limits, target.interval_ms))
        backoff = until if until > now else None
    return WatchState(newest is not None, _warmups(connection, target, target_id), backoff,
                      _budget(engine, target, target_id, now), maintenance,
                      not_applicable(target))


def not_applicable(target: Target) -> tuple[str, ...]:
    """The detectors that cannot apply to `target`'s provider, in words."""
    if target.provider is Provider.ANTHROPIC:
        return ("fingerprint detector not applicable (Anthropic sends no system_fingerprint)",
                "output detector not applicable (the Messages API takes no seed)")
    return ()


def _budget(engine: Engine, target: Target, target_id: int | None, now: datetime) -> str | None:
    if target.daily_token_budget is None and target.daily_request_budget is None:
        return None
    used = (0, 0) if target_id is None else usage_since(engine, target_id, utc_day(now))
    return budget_spent(target, *used)


def _warmups(connection: Connection, target: Target, target_id: int) -> tuple[Warmup, ...] | None:
    """The detectors' warm-ups as of the newest stored probe.

    From the state the daemon saved, plus any probes stored since (folded here, not saved).
    A state that is missing or was made under other thresholds is what the daemon replaces
    by folding the whole history at the target's next probe; this folds it the same way."""
    reader = history.ObservationReader()
    detector = None
    position = history.position(connection, target_id)
    if position is not None and position[0] == history.thresholds_hash(target.detection):
        last = position[1]
        try:
            detector = TargetDetector.restore(
                target.name, target.detection,
                history.unpack_state(history.load_state(connection, target_id)))
        except (ValueError, KeyError):
            detector = None  # an older snapshot layout: the daemon folds history again
    if detector is None:
        if history.more_than(connection, target_id, defaults.WATCH_FOLD_MAX_PROBES):
            return None
        detector, last = TargetDetector(target.name, target.detection), 0
    while chunk := reader.after(connection, target_id, last, checks=bool(target.checks)):
        for stored_id, observation in chunk:
            detector.step(observation)
            last = stored_id
    return tuple(detector.warmups())


def states_json(states: dict[str, WatchState], now: datetime) -> dict[str, dict[str, Any]]:
    return {name: state.to_json(now) for name, state in states.items()}
