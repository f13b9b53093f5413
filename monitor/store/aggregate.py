"""One target's numbers over one span (an hour, a day, all time): counts, latency sketches,
tokens, fingerprints and models seen, rate-limit headroom and the last error, folded probe by
probe and merged span by span. The rollup tables store it; rollups.py folds probes into it and
health.py reads it back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.sketch import Sketch

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Each sketch and the probe column it summarizes (successful probes only, as the latency
# detectors judge them); totals keep the latency ones, which /metrics exposes.
PHASES = {
    "total": "total_ms",
    "headers": "time_to_headers_ms",
    "ttft": "time_to_first_token_ms",
    "processing": "openai_processing_ms",
    "tokens_per_s": "output_tokens_per_s",
}
TOTAL_PHASES = ("total", "headers", "ttft", "processing")
_SKETCH_COLUMN = {
    "total": "total_ms_sketch",
    "headers": "headers_ms_sketch",
    "ttft": "ttft_ms_sketch",
    "processing": "processing_ms_sketch",
    "tokens_per_s": "tokens_per_s_sketch",
}

# What folding reads of a probe (reports read raw probes the same way at a range's edges).

def micros(at: datetime) -> int:
    return (at - EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return EPOCH + value * _MICROSECOND


def floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def floor_day(at: datetime) -> datetime:
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def segments(since: datetime, until: datetime,
              bucket: str) -> list[tuple[str | None, datetime, datetime]]:
    """[since, until) as (grain, start, end) pieces: None for raw probes, else a rollup span."""
    first_hour = floor_hour(since) + (timedelta(hours=1) if since != floor_hour(since)
                                      else timedelta())
    last_hour = floor_hour(until)
    if first_hour >= last_hour:
        return [(None, since, until)]
    middle: list[tuple[str | None, datetime, datetime]] = [("hour", first_hour, last_hour)]
    if bucket == "day":
        first_day = floor_day(first_hour) + (
            timedelta(days=1) if first_hour != floor_day(first_hour) else timedelta())
        last_day = floor_day(last_hour)
        if first_day < last_day:
            middle = [("hour", first_hour, first_day), ("day", first_day, last_day),
                      ("hour", last_day, last_hour)]
    pieces = [(None, since, first_hour), *middle, (None, last_hour, until)]
    return [piece for piece in pieces if piece[1] < piece[2]]


def headroom(remaining: int | None, limit: int | None) -> float | None:
    """remaining / limit in [0, 1]; None unless both were sent."""
    if remaining is None or limit is None or limit <= 0:
        return None
    return min(max(remaining / limit, 0.0), 1.0)


def _lowest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


@dataclass(frozen=True)
class Limits:
    """The rate-limit values of the newest probe that carried any."""

    at: datetime
    limit_requests: int | None
    limit_tokens: int | None
    remaining_requests: int | None
    remaining_tokens: int | None


@dataclass(frozen=True)
class Newest:
    """The newest probe: when, and whether it succeeded."""

    at: datetime
    ok: bool


@dataclass(frozen=True)
class Served:
    """What the newest successful probe said it was."""

    at: datetime
    fingerprint: str | None
    model: str | None


@dataclass(frozen=True)
class LastError:
    at: datetime
    kind: str | None
    status: int | None
    detail: str | None


@dataclass
class Aggregate:
    """What a rollup row holds, as an accumulator: built from probes or stored rows, merged
    with others (an hour into its day; the rows of a report's range into one)."""

    probes: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    # Only the phases measured: most targets never measure ttft or tokens/s.
    sketches: dict[str, Sketch] = field(default_factory=dict)
    # value -> [count, first seen, last seen], times in microseconds since the epoch
    fingerprints: dict[str, list[int]] = field(default_factory=dict)
    models: dict[str, list[int]] = field(default_factory=dict)
    limits: Limits | None = None
    min_headroom_requests: float | None = None
    min_headroom_tokens: float | None = None
    last_error: LastError | None = None
    # Kept in totals only (rollup_totals), for /metrics.
    newest: Newest | None = None
    served: Served | None = None
    checks: dict[str, dict[str, int]] = field(default_factory=dict)  # check -> outcome -> probes

    def add(self, probe: Any) -> None:
        """Fold one probe (a row of PROBE_COLUMNS). Probes come in id order: of two at the
        same instant, the later-stored one is the newer."""
        at = probe.started_at
        self.probes += 1
        if self.newest is None or at >= self.newest.at:
            self.newest = Newest(at, probe.ok)
        if probe.ok:
            self.ok += 1
            if self.served is None or at >= self.served.at:
                self.served = Served(at, probe.system_fingerprint, probe.model)
            self.prompt_tokens += probe.prompt_tokens or 0
            self.completion_tokens += probe.completion_tokens or 0
            self.total_tokens += probe.total_tokens or 0
            for phase, column in PHASES.items():
                value = getattr(probe, column)
                if value is not None:
                    self._sketch_for(phase).add(value)
        else:
            kind = probe.error_kind or "unknown"
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if self.last_error is None or at >= self.last_error.at:
                self.last_error = LastError(at, probe.error_kind, probe.http_status,
                                            probe.error_detail)
        if probe.system_fingerprint is not None:
            _seen(self.fingerprints, probe.system_fingerprint, micros(at))
        if probe.model is not None:
            _seen(self.models, probe.model, micros(at))
        limits = Limits(at, probe.ratelimit_limit_requests, probe.ratelimit_limit_tokens,
                        probe.ratelimit_remaining_requests, probe.ratelimit_remaining_tokens)
        if any(v is not None for v in (limits.limit_requests, limits.limit_tokens,
                                       limits.remaining_requests, limits.remaining_tokens)):
            if self.limits is None or at >= self.limits.at:
                self.limits = limits
            self.min_headroom_requests = _lowest(
                self.min_headroom_requests, headroom(limits.remaining_requests,
                                                     limits.limit_requests))
            self.min_headroom_tokens = _lowest(
                self.min_headroom_tokens, headroom(limits.remaining_tokens, limits.limit_tokens))

    def add_check(self, check: str, outcome: str) -> None:
        """Count one check outcome of a folded probe."""
        outcomes = self.checks.setdefault(check, {})
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def merge(self, other: Aggregate) -> None:
        self.probes += other.probes
        self.ok += other.ok
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        for phase, sketch in other.sketches.items():
            if sketch:
                self._sketch_for(phase).merge(sketch)
        for mine, theirs in ((self.fingerprints, other.fingerprints),
                             (self.models, other.models)):
            for value, (count, first, last) in theirs.items():
                entry = mine.get(value)
                if entry is None:
                    mine[value] = [count, first, last]
                else:
                    entry[0] += count
                    entry[1] = min(entry[1], first)
                    entry[2] = max(entry[2], last)
        if other.limits is not None and (self.limits is None
                                         or other.limits.at >= self.limits.at):
            self.limits = other.limits
        self.min_headroom_requests = _lowest(self.min_headroom_requests,
                                             other.min_headroom_requests)
        self.min_headroom_tokens = _lowest(self.min_headroom_tokens, other.min_headroom_tokens)
        if other.last_error is not None and (self.last_error is None
                                             or other.last_error.at >= self.last_error.at):
            self.last_error = other.last_error
        if other.newest is not None and (self.newest is None
                                         or other.newest.at >= self.newest.at):
            self.newest = other.newest
        if other.served is not None and (self.served is None
                                         or other.served.at >= self.served.at):
            self.served = other.served
        for check, outcomes in other.checks.items():
            counted = self.checks.setdefault(check, {})
            for outcome, count in outcomes.items():
                counted[outcome] = counted.get(outcome, 0) + count

    def sketch(self, phase: str) -> Sketch:
        """The phase's sketch; an empty one if nothing was measured."""
        return self.sketches.get(phase) or Sketch()

    def _sketch_for(self, phase: str) -> Sketch:
        sketch = self.sketches.get(phase)
        if sketch is None:
            sketch = self.sketches[phase] = Sketch()
        return sketch

    @classmethod
    def from_row(cls, row: Any) -> Aggregate:
        """From a stored rollups row. It takes the row's decoded JSON as its own (merging
        changes it): reports read a year of rows, and copying them would be a tenth of that."""
        aggregate = cls(
            probes=row.probes, ok=row.ok, errors=row.errors,
            prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
            total_tokens=row.total_tokens, sketches=_sketches(row, PHASES),
            fingerprints=row.fingerprints, models=row.models,
            min_headroom_requests=row.min_headroom_requests,
            min_headroom_tokens=row.min_headroom_tokens,
        )
        if row.limits_at is not None:
            aggregate.limits = Limits(row.limits_at, row.limit_requests, row.limit_tokens,
                                      row.remaining_requests, row.remaining_tokens)
        if row.last_error_at is not None:
            aggregate.last_error = LastError(row.last_error_at, row.last_error_kind,
                                             row.last_error_status, row.last_error_detail)
        return aggregate

    @classmethod
    def from_total(cls, row: Any) -> Aggregate:
        """From a stored rollup_totals row: outcomes, latency sketches, the newest probe,
        the newest successful one, the newest rate limits and the check outcomes."""
        return cls(probes=row.probes, ok=row.ok, errors=row.errors,
                   sketches=_sketches(row, TOTAL_PHASES),
                   limits=None if row.limits_at is None else Limits(
                       row.limits_at, row.limit_requests, row.limit_tokens,
                       row.remaining_requests, row.remaining_tokens),
                   newest=None if row.newest_at is None else Newest(row.newest_at,
                                                                    row.newest_ok),
                   served=None if row.ok_at is None else Served(row.ok_at, row.ok_fingerprint,
                                                                row.ok_model),
                   checks=row.checks)

    def row_values(self) -> dict[str, Any]:
        error = self.last_error
        return {
            "probes": self.probes, "ok": self.ok, "errors": self.errors,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            **self._sketch_values(PHASES),
            "fingerprints": self.fingerprints, "models": self.models,
            **self._limit_values(),
            "min_headroom_requests": self.min_headroom_requests,
            "min_headroom_tokens": self.min_headroom_tokens,
            "last_error_at": error.at if error else None,
            "last_error_kind": error.kind if error else None,
            "last_error_status": error.status if error else None,
            "last_error_detail": error.detail if error else None,
        }

    def total_values(self) -> dict[str, Any]:
        newest, served = self.newest, self.served
        return {"probes": self.probes, "ok": self.ok, "errors": self.errors,
                **self._sketch_values(TOTAL_PHASES),
                "newest_at": newest.at if newest else None,
                "newest_ok": newest.ok if newest else None,
                "ok_at": served.at if served else None,
                "ok_fingerprint": served.fingerprint if served else None,
                "ok_model": served.model if served else None,
                **self._limit_values(), "checks": self.checks}

    def _limit_values(self) -> dict[str, Any]:
        limits = self.limits
        return {"limits_at": limits.at if limits else None,
                "limit_requests": limits.limit_requests if limits else None,
                "limit_tokens": limits.limit_tokens if limits else None,
                "remaining_requests": limits.remaining_requests if limits else None,
                "remaining_tokens": limits.remaining_tokens if limits else None}

    def _sketch_values(self, phases: Iterable[str]) -> dict[str, bytes | None]:
        # An empty sketch is stored as NULL: most targets never measure ttft or tokens/s.
        return {_SKETCH_COLUMN[p]: self.sketch(p).to_bytes() if self.sketches.get(p) else None
                for p in phases}


def _sketches(row: Any, phases: Iterable[str]) -> dict[str, Sketch]:
    blobs = ((phase, getattr(row, _SKETCH_COLUMN[phase])) for phase in phases)
    return {phase: Sketch.from_bytes(blob) for phase, blob in blobs if blob is not None}


def _seen(table: dict[str, list[int]], value: str, at: int) -> None:
    entry = table.get(value)
    if entry is None:
        table[value] = [1, at, at]
    else:
        entry[0] += 1
        entry[1] = min(entry[1], at)
        entry[2] = max(entry[2], at)


# --- as reports show them ----------------------------------------------------------------


def percentiles(sketch: Sketch) -> dict[str, float] | None:
    if not sketch:
        return None
    p50, p95, p99 = sketch.quantiles((0.5, 0.95, 0.99))
    return {"p50": ms(p50 or 0.0), "p95": ms(p95 or 0.0), "p99": ms(p99 or 0.0)}


def seen(label: str, table: dict[str, list[int]]) -> list[dict[str, Any]]:
    """Every value with its share of the probes that carried one, most frequent first."""
    carried = sum(count for count, _, _ in table.values())
    ordered = sorted(table.items(), key=lambda item: (-item[1][0], item[0]))
    return [{label: value, "count": count, "share": fraction(count / carried),
             "first_seen": from_micros(first).isoformat(),
             "last_seen": from_micros(last).isoformat()}
            for value, (count, first, last) in ordered]


def ms(value: float) -> float:
    # Four significant digits: the sketch is good to 0.5%, so more would be noise.
    return float(f"{value:.4g}")


def fraction(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
