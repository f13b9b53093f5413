"""Replay a range of one target's stored requests (`monitor replay --target T --since D`).

- Identity: a run is the command's options (source, destination, --since/--until as typed,
  --limit). Its items are fixed when it starts. Running the same command again continues the
  unfinished run, and running it after the run has finished starts a new run.
- At most once: each item is claimed in the database before its request is sent, and stored
  with its answer in one transaction (store/replays.py). A warm stop (the first Ctrl-C or
  SIGTERM) finishes the requests in flight. A kill can leave some claimed items unanswered;
  they are reported, and never sent again.
- Within limits: a 429 pauses every worker until retry-after (or the x-ratelimit reset), and
  then the same request is retried. A response that leaves no remaining requests or tokens
  pauses the workers until its reset. The destination's daily request and token budgets
  (stored probes of the UTC day, replays included) stop the run, which the same command
  resumes later.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import requests
from sqlalchemy import Engine

from monitor import probe
from monitor.detect.stats import percentile
from monitor.domain import CheckOutcome, ErrorKind, ProbeResult, ReplayState, Target
from monitor.probe import providers
from monitor.probe.checks import evaluate, stored_answer
from monitor.replay.send import Plan, ReplayError, plan
from monitor.store import check_results, replays
from monitor.store.records import Recorder, target_id_of, usage_since
from monitor.store.replays import Claim, LinkedWriter, RunSpec, StoredAnswer
from monitor.store.shared import canonical_json

# A 429 that outlasts this many waits is the answer (insufficient_quota never resets): the
# replay stores it rather than retrying forever.
MAX_RATE_LIMITED = 8
# Without retry-after or reset headers, wait this long after a 429, doubling each time.
FALLBACK_WAIT_S = 1.0
# One wait at most: a day-long retry-after (a spent quota) then ends the run's retries of a
# request within minutes, with the 429 stored, instead of sleeping until tomorrow.
MAX_WAIT_S = 60.0


@dataclass(frozen=True)
class BatchSpec:
    source: str  # the target whose stored requests are replayed
    destination: Target
    since: str | None  # as typed: part of the run's identity
    until: str | None
    since_at: datetime | None
    until_at: datetime | None
    limit: int | None
    concurrency: int = 4
    sample: int | None = None  # --sample: this many, spread evenly over the range


@dataclass(frozen=True)
class Latency:
    p50_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class BatchSummary:
    run_id: int
    resumed: bool
    destination: str
    items: int
    done: int
    pending: int
    lost: int  # claimed but unanswered: by a process that died (never re-sent), or in
    # flight in another process running the same command
    sent_now: int  # answers stored by this invocation
    rate_limited: int  # 429s waited out, over the whole run
    stopped: str | None  # why the run stopped before its end, if it did
    failed: int  # replays that got an error
    recovered: int  # the original failed, the replay succeeded
    content_changed: int  # both answered, with different content
    fingerprint_changed: int
    model_changed: int
    original: Latency  # total_ms of successful pairs
    replay: Latency
    model_change: tuple[str | None, str | None] | None
    # check -> (pairs that answered both times, originals that passed, replays that passed),
    # by the destination's checks as configured now
    checks: dict[str, tuple[int, int, int]]


def run_key(spec: BatchSpec) -> str:
    identity = {"target": spec.source, "to": spec.destination.name, "since": spec.since,
                "until": spec.until, "limit": spec.limit}
    if spec.sample is not None:  # commands from before --sample keep their identity
        identity["sample"] = spec.sample
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()


class Gate:
    """Holds every worker back while the destination is rate limited."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0  # time.monotonic()

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def wait(self, stop: threading.Event) -> bool:
        """Block until sending is allowed; False if `stop` was set meanwhile."""
        while not stop.is_set():
            with self._lock:
                delay = self._until - time.monotonic()
            if delay <= 0:
                return True
            stop.wait(delay)
        return False

    def observe(self, result: ProbeResult) -> None:
        """Pause before the server has to refuse: nothing left in the window until its reset."""
        limits = result.rate_limits
        if limits.remaining_requests == 0:
            self.pause(limits.reset_requests_s or FALLBACK_WAIT_S)
        if limits.remaining_tokens == 0:
            self.pause(limits.reset_tokens_s or FALLBACK_WAIT_S)


def wait_after_429(result: ProbeResult, attempt: int) -> float:
    """What the server asked for; else the reset of the exhausted limit; else back off."""
    limits = result.rate_limits
    for hint in (result.retry_after_s, limits.reset_requests_s, limits.reset_tokens_s):
        if hint is not None and hint > 0:
            return min(hint, MAX_WAIT_S)
    return min(FALLBACK_WAIT_S * 2.0 ** attempt, MAX_WAIT_S)


class Budget:
    """The destination's daily budgets: stored usage of the UTC day, read when the run starts
    and at each new day, plus what this run has sent since."""

    def __init__(self, engine: Engine, target: Target, target_id: int) -> None:
        self._engine = engine
        self._target = target
        self._target_id = target_id
        self._lock = threading.Lock()
        self._limited = (target.daily_request_budget is not None
                         or target.daily_token_budget is not None)
        self._day: datetime | None = None
        self._requests = self._tokens = 0

    def reserve(self) -> str | None:
        """Count one request about to be sent; or why the budget forbids it."""
        target = self._target
        if not self._limited:
            return None
        with self._lock:
            day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            if day != self._day:
                self._day = day
                self._requests, self._tokens = usage_since(self._engine, self._target_id, day)
            budget = target.daily_request_budget
            if budget is not None and self._requests >= budget:
                return (f"daily request budget of {target.name} spent ({self._requests} of "
                        f"{budget} requests today, UTC)")
            budget = target.daily_token_budget
            if budget is not None and self._tokens >= budget:
                return (f"daily token budget of {target.name} spent ({self._tokens} of "
                        f"{budget} tokens today, UTC)")
            self._requests += 1
            return None

    def unreserve(self) -> None:
        if self._limited:
            with self._lock:
                self._requests -= 1

    def settle(self, tokens: int | None) -> None:
        with self._lock:
            self._tokens += tokens or 0


class _Runner:
    """The workers of one invocation, sharing the gate, the budget and the run's claims."""

    def __init__(self, engine: Engine, spec: BatchSpec, run: replays.Run,
                 budget: Budget, stop: threading.Event) -> None:
        self.engine = engine
        self.spec = spec
        self.run = run
        self.budget = budget
        self.stop = stop
        self.gate = Gate()
        self.writer = LinkedWriter(engine)
        self.done: queue.Queue[int] = queue.Queue()
        self.stopped: str | None = None
        self.model_change: tuple[str | None, str | None] | None = None
        self._claim_lock = threading.Lock()
        self._plans: dict[int, Plan] = {}  # by request payload id: canaries repeat

    def work(self) -> None:
        session = providers.new_session()  # the worker's, for any target (probe.run)
        try:
            self._work(session)
        except BaseException:
            self.stop.set()  # one worker's error ends the run: the others stop claiming
            raise
        finally:
            session.close()

    def _work(self, session: requests.Session) -> None:
        while self.gate.wait(self.stop):
            reason = self.budget.reserve()
            if reason is not None:
                self.stopped = reason
                self.stop.set()
                return
            with self._claim_lock:  # this process's workers take items one at a time
                claim = replays.claim(self.engine, self.run.id, datetime.now(UTC))
            if claim is None:
                self.budget.unreserve()
                return
            try:
                chosen = self._plan(claim)
            except ReplayError as error:
                replays.release(self.engine, claim.item_id)
                raise ReplayError(f"probe #{claim.probe_id}: {error}") from None
            self._send(claim, chosen, session)

    def _plan(self, claim: Claim) -> Plan:
        known = self._plans.get(claim.request_payload_id)
        if known is None:
            payload = replays.payload(self.engine, claim.request_payload_id)
            known = plan(payload, self.spec.source, self.spec.destination)
            self._plans[claim.request_payload_id] = known
            self.model_change = self.model_change or known.model_change
        return known

    def _send(self, claim: Claim, chosen: Plan, session: requests.Session) -> None:
        waits = 0
        while True:
            result = probe.run(chosen.target, session)
            if result.error_kind is not ErrorKind.RATE_LIMITED or waits >= MAX_RATE_LIMITED:
                break
            self.gate.pause(wait_after_429(result, waits))
            waits += 1
            if not self.gate.wait(self.stop):
                # Refused, so not answered: the next run of the command sends it.
                replays.release(self.engine, claim.item_id)
                self.budget.unreserve()
                return
        self.gate.observe(result)
        self.writer.save(result, chosen.config, claim.probe_id, claim.item_id, waits)
        self.budget.settle(result.usage.total_tokens)
        self.done.put(1)


def run_batch(engine: Engine, spec: BatchSpec, stop: threading.Event,
              on_start: Callable[[replays.Run, int], None] = lambda run, done: None,
              on_progress: Callable[[int], None] = lambda n: None) -> BatchSummary:
    """Replay the run's pending items until none is left or `stop` is set. `on_start` gets the
    run and how many items were done before; `on_progress` each answer stored now. Both are
    called on this thread."""
    source_id = target_id_of(engine, spec.source)
    if source_id is None:
        raise ReplayError(f"no stored probes of target {spec.source!r}")
    destination_id = Recorder(engine).target_id(spec.destination.name)
    run = replays.open_run(engine, RunSpec(run_key(spec), source_id, destination_id,
                                           spec.since_at, spec.until_at, spec.limit,
                                           spec.sample),
                           datetime.now(UTC))
    on_start(run, replays.progress(engine, run.id)[ReplayState.DONE])
    runner = _Runner(engine, spec, run, Budget(engine, spec.destination, destination_id), stop)
    sent = 0
    with ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="replay") as pool:
        workers = [pool.submit(runner.work) for _ in range(spec.concurrency)]
        while not all(w.done() for w in workers) or not runner.done.empty():
            try:
                sent += runner.done.get(timeout=0.1)
                on_progress(1)
            except queue.Empty:
                pass
        for worker in workers:
            worker.result()  # a worker's error is raised here
    counts = replays.progress(engine, run.id)
    stopped = runner.stopped or ("stopped on request" if stop.is_set() else None)
    if counts[ReplayState.PENDING] == 0:
        replays.finish(engine, run.id, datetime.now(UTC))
    return summarize(engine, run, spec.destination, counts, sent, stopped,
                     runner.model_change)


def summarize(engine: Engine, run: replays.Run, destination: Target,
              counts: dict[ReplayState, int], sent_now: int, stopped: str | None,
              model_change: tuple[str | None, str | None] | None) -> BatchSummary:
    pairs = replays.run_pairs(engine, run.id)
    both = [(o, r) for o, r, _ in pairs if o.ok and r.ok]
    return BatchSummary(
        run_id=run.id, resumed=run.resumed, destination=destination.name, items=run.items,
        done=counts[ReplayState.DONE], pending=counts[ReplayState.PENDING],
        lost=counts[ReplayState.SENDING], sent_now=sent_now,
        rate_limited=sum(waits for _, _, waits in pairs), stopped=stopped,
        failed=sum(not r.ok for _, r, _ in pairs),
        recovered=sum(not o.ok and r.ok for o, r, _ in pairs),
        content_changed=sum(o.content != r.content for o, r in both),
        fingerprint_changed=sum(o.system_fingerprint != r.system_fingerprint for o, r in both),
        model_changed=sum(o.model != r.model for o, r in both),
        original=_latency([o for o, _ in both]),
        replay=_latency([r for _, r in both]),
        model_change=model_change,
        checks=_checks(engine, destination, both),
    )


def _checks(engine: Engine, target: Target, both: list[tuple[StoredAnswer, StoredAnswer]]
            ) -> dict[str, tuple[int, int, int]]:
    """How the target's checks judge the originals and their replays, pair by pair."""
    if not target.checks or not both:
        return {}
    with engine.connect() as connection:
        extras = check_results.answers(connection, [a.probe_id for pair in both for a in pair])
    passed = {check.name: [0, 0] for check in target.checks}
    for pair in both:
        for side, a in enumerate(pair):
            tokens, choices = extras[a.probe_id]
            answer = stored_answer(a.ok, a.content, a.finish_reason, tokens, a.total_ms, choices)
            for result in evaluate(target.checks, answer):
                passed[result.check][side] += result.outcome is CheckOutcome.PASS
    return {name: (len(both), before, after) for name, (before, after) in passed.items()}


def _latency(answers: list[StoredAnswer]) -> Latency:
    values = sorted(a.total_ms for a in answers if a.total_ms is not None)
    if not values:
        return Latency(None, None)
    return Latency(percentile(values, 50), percentile(values, 95))
