"""Observations for the detector tests: a steady, healthy canary and changes made to it."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.detect import detect
from monitor.domain import (
    DetectionThresholds,
    DriftEvent,
    DriftKind,
    ErrorKind,
    Observation,
    RateLimits,
)

START = datetime(2026, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
LIMITS = RateLimits(
    limit_requests=10_000,
    limit_tokens=30_000_000,
    remaining_requests=9_990,
    remaining_tokens=29_990_000,
)


def obs(i: int, **changes: Any) -> Observation:
    """The i-th probe (one a minute) of a healthy deterministic canary, with `changes` applied."""
    fields: dict[str, Any] = {
        "uid": f"p{i:06d}",
        "started_at": START + i * MINUTE,
        "ok": True,
        "error_kind": None,
        "http_status": 200,
        "requested_model": "gpt-4o",
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_a",
        "total_ms": 200.0,
        "time_to_first_token_ms": None,
        "openai_processing_ms": None,
        "rate_limits": LIMITS,
        "content": "pong",
        "finish_reason": "stop",
        "prompt_tokens": 14,
        "request_hash": "req-1",
        "deterministic": True,
    }
    fields.update(changes)
    return Observation(**fields)


def failed(i: int, kind: ErrorKind = ErrorKind.HTTP_SERVER_ERROR, **changes: Any) -> Observation:
    """The i-th probe, failed: no body, so no model, fingerprint or answer."""
    status = {ErrorKind.RATE_LIMITED: 429, ErrorKind.HTTP_SERVER_ERROR: 503}.get(kind)
    fields: dict[str, Any] = {
        "ok": False,
        "error_kind": kind,
        "http_status": status,
        "model": None,
        "system_fingerprint": None,
        "total_ms": None,
        "rate_limits": RateLimits(),
        "content": None,
        "finish_reason": None,
        "prompt_tokens": None,
    }
    return obs(i, **(fields | changes))


def steady(start: int, stop: int, seed: int = 1, **changes: Any) -> list[Observation]:
    """Probes start..stop-1 of a healthy canary with realistic noise: latency 200 ms +- 40 ms,
    fingerprints fp_a and fp_b at random 3:1, remaining requests moving about."""
    rng = random.Random(seed)
    history = []
    for i in range(start, stop):
        noise: dict[str, Any] = {
            "total_ms": rng.uniform(160, 240),
            "system_fingerprint": "fp_a" if rng.random() < 0.75 else "fp_b",
            "rate_limits": RateLimits(
                limit_requests=10_000,
                limit_tokens=30_000_000,
                remaining_requests=rng.randint(3_000, 10_000),
                remaining_tokens=rng.randint(9_000_000, 30_000_000),
            ),
        }
        history.append(obs(i, **(noise | changes)))
    return history


def run(
    observations: Iterable[Observation], thresholds: DetectionThresholds | None = None
) -> list[DriftEvent]:
    return detect("gpt-4o", observations, thresholds or DetectionThresholds())


def of_kind(events: Iterable[DriftEvent], kind: DriftKind) -> list[DriftEvent]:
    return [event for event in events if event.kind is kind]


def index_of(event: DriftEvent) -> int:
    """Which probe (as numbered by `obs`) the event happened at."""
    return (event.at - START) // MINUTE
