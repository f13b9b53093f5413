"""The simulator's mutable state: current scenario, request counter, rate-limit budgets, the queue
of one-shot overrides and the counters /_sim/stats reports.

One lock guards all of it. A request holds it only for a few dictionary operations, never while
sleeping or writing, so slow answers do not serialize each other.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from monitor.sim import faults
from monitor.sim.scenario import Override, Scenario


@dataclass(frozen=True)
class Ticket:
    """What one chat completion request gets on arrival."""

    number: int  # 0-based, in arrival order since start or the last reset
    rng: random.Random  # seeded by (seed, number): the same sequence draws the same values
    scenario: Scenario  # a snapshot: an update mid-request does not tear the answer
    now: float  # the clock at arrival, unix seconds
    elapsed_s: float  # since start or the last reset; drives slow periods and rotation


def answer_delay(ticket: Ticket, stream: bool, jitter_ms: float, override: Override,
                 fault: str | None) -> tuple[float, float]:
    """(ms before the answer, or before a stream's first token; the slowdown factor the
    per-token time is multiplied by): the scenario's latency at the ticket's moment, unless the
    request's override sets it, plus a second for the `slow` fault. Both APIs answer so."""
    latency = ticket.scenario.latency
    factor = latency.factor(ticket.elapsed_s)
    base_ms = latency.ttft_ms if stream and latency.ttft_ms is not None else latency.base_ms
    delay_ms = max(0.0, base_ms + jitter_ms) * factor
    if override.latency_ms is not None:
        delay_ms = override.latency_ms
    if fault == faults.SLOW:
        delay_ms += 1000
    return delay_ms, factor


@dataclass(frozen=True)
class Budget:
    """The rate-limit numbers a response reports."""

    limit_requests: int
    limit_tokens: int
    remaining_requests: int
    remaining_tokens: int
    reset_s: float  # until the current window ends and both budgets refill
    exceeded: str | None = None  # "requests" or "tokens" when this request was refused


class State:
    def __init__(self, scenario: Scenario, seed: int | None, clock: Callable[[], float]) -> None:
        self._initial = scenario
        self._seed = seed
        # Drawn once, so that reset() replays the same sequence even without any seed given.
        self._fallback_seed = random.SystemRandom().getrandbits(32)
        self._clock = clock
        self._lock = threading.Lock()
        # API requests received and not yet fully answered; not cleared by reset(), because
        # those requests are still being answered. Tests wait on it ("a probe is mid-flight").
        self._in_flight = 0
        self._restart()

    def _restart(self) -> None:
        self._scenario = self._initial
        self._started_at = self._clock()
        self._count = 0
        self._queue: deque[Override] = deque()
        self._window = 0
        self._requests_used = 0
        self._tokens_used = 0
        self._paths: Counter[str] = Counter()
        self._models: Counter[str] = Counter()
        self._outcomes: Counter[str] = Counter()

    @property
    def scenario(self) -> Scenario:
        return self._scenario

    def begin(self) -> Ticket:
        """Number the arriving chat completion request and give it its own RNG."""
        now = self._clock()
        with self._lock:
            number = self._count
            self._count += 1
            scenario = self._scenario
            elapsed_s = now - self._started_at
        seed = self._seed if self._seed is not None else scenario.seed
        if seed is None:
            seed = self._fallback_seed
        return Ticket(number, random.Random(f"{seed}:{number}"), scenario, now, elapsed_s)

    def enter(self) -> None:
        """An API request arrived; leave() once its answer is written (or abandoned)."""
        with self._lock:
            self._in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def take_override(self, model: str) -> Override | None:
        """The oldest queued override meant for `model` (or for any model), removed."""
        with self._lock:
            for override in self._queue:
                if override.model is None or override.model == model:
                    self._queue.remove(override)
                    return override
        return None

    def charge(self, tokens: int, now: float) -> Budget:
        """Take one request and `tokens` from the current window, unless either budget is short."""
        return self._budget(now, tokens)

    def budget(self, now: float) -> Budget:
        """The numbers as they stand, charging nothing."""
        return self._budget(now, None)

    def _budget(self, now: float, tokens: int | None) -> Budget:
        with self._lock:
            limits = self._scenario.rate_limits
            reset_s = self._roll_window(now, limits.window_s)
            left_requests = limits.requests_per_window - self._requests_used
            left_tokens = limits.tokens_per_window - self._tokens_used
            exceeded = None
            if tokens is not None:
                exceeded = (
                    "requests" if left_requests < 1 else "tokens" if left_tokens < tokens else None
                )
                if exceeded is None:
                    self._requests_used += 1
                    self._tokens_used += tokens
                    left_requests -= 1
                    left_tokens -= tokens
        return Budget(limits.requests_per_window, limits.tokens_per_window,
                      max(0, left_requests), max(0, left_tokens), reset_s, exceeded)

    def _roll_window(self, now: float, window_s: float) -> float:
        """Refill both budgets when a new window has begun; the seconds left in this one."""
        window = int((now - self._started_at) // window_s)
        if window != self._window:
            self._window = window
            self._requests_used = 0
            self._tokens_used = 0
        return self._started_at + (window + 1) * window_s - now

    def record(self, path: str, model: str | None, outcome: str) -> None:
        with self._lock:
            self._paths[path] += 1
            if model is not None:
                self._models[model] += 1
            self._outcomes[outcome] += 1

    def update(self, changes: Mapping[str, Any], source: str) -> Scenario:
        """Merge `changes` into the current scenario (validated first; SimulatorError if bad)."""
        with self._lock:
            self._scenario = self._scenario.updated(changes, source)
            return self._scenario

    def enqueue(self, overrides: Iterable[Override]) -> int:
        with self._lock:
            self._queue.extend(overrides)
            return len(self._queue)

    def reset(self) -> None:
        """Back to the starting scenario, counters, budgets and clock; the queue is emptied."""
        with self._lock:
            self._restart()

    def stats(self) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            return {
                "requests": sum(self._paths.values()),
                "queued_overrides": len(self._queue),
                "in_flight": self._in_flight,
                "uptime_s": round(now - self._started_at, 3),
                "by_path": dict(self._paths),
                "by_model": dict(self._models),
                "by_outcome": dict(self._outcomes),
            }
