"""A run of a target's observations as columns: what the detectors' bulk fold walks.

Folding a long history one Observation at a time spends most of its time building objects and
calling methods that change nothing: the same fingerprint, model, limits and answer every
minute. `Detector.fold` walks these columns instead, with local variables, and builds the
Observation of a probe (`observation(i)`) only to step it the ordinary way when it may change
more than a window, so the result is exactly that of stepping every Observation in turn.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from monitor.domain import CheckResult, ErrorKind, Observation, RateLimits

LIMITS = tuple(field.name for field in fields(RateLimits))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Columns:
    """Observations in fold order, one sequence per field (the i-th of each is probe i's);
    `limits` holds a column per RateLimits field, by name."""

    uid: Sequence[str]
    started_at: Sequence[datetime]
    ok: Sequence[bool]
    error_kind: Sequence[str | None]  # ErrorKind values, as stored
    http_status: Sequence[int | None]
    requested_model: Sequence[str | None]
    model: Sequence[str | None]
    system_fingerprint: Sequence[str | None]
    total_ms: Sequence[float | None]
    time_to_first_token_ms: Sequence[float | None]
    openai_processing_ms: Sequence[float | None]
    limits: dict[str, Sequence[int | float | None]]
    content: Sequence[str | None]
    finish_reason: Sequence[str | None]
    prompt_tokens: Sequence[int | None]
    request_hash: Sequence[str]
    deterministic: Sequence[bool]
    checks: Sequence[tuple[CheckResult, ...]]

    def __len__(self) -> int:
        return len(self.uid)

    @functools.cached_property
    def started_ms(self) -> list[int]:
        """started_at as base.ms() gives it, worked out once for every detector."""
        return [(at - _EPOCH) // _ONE_MS for at in self.started_at]

    def observation(self, i: int) -> Observation:
        """Probe i as the Observation stepping it takes."""
        limits = self.limits
        error_kind = self.error_kind[i]
        return frozen(Observation, {
            "uid": self.uid[i],
            "started_at": self.started_at[i],
            "ok": self.ok[i],
            "error_kind": ErrorKind(error_kind) if error_kind else None,
            "http_status": self.http_status[i],
            "requested_model": self.requested_model[i],
            "model": self.model[i],
            "system_fingerprint": self.system_fingerprint[i],
            "total_ms": self.total_ms[i],
            "time_to_first_token_ms": self.time_to_first_token_ms[i],
            "openai_processing_ms": self.openai_processing_ms[i],
            "rate_limits": frozen(RateLimits, {name: limits[name][i] for name in LIMITS}),
            "content": self.content[i],
            "finish_reason": self.finish_reason[i],
            "prompt_tokens": self.prompt_tokens[i],
            "request_hash": self.request_hash[i],
            "deterministic": self.deterministic[i],
            "checks": self.checks[i],
        })

    def section(self, start: int, stop: int) -> Columns:
        """Probes `start` to `stop` (excluded)."""
        return self._each(lambda column: column[start:stop])

    def where(self, keep: Sequence[bool]) -> Columns:
        """The probes whose `keep` is true, in the same order."""
        return self._each(lambda column: [value for value, wanted
                                          in zip(column, keep, strict=True) if wanted])

    def _each(self, take: Callable[[Sequence[Any]], Sequence[Any]]) -> Columns:
        """The columns each taken through `take`."""
        taken: dict[str, Any] = {field.name: take(getattr(self, field.name))
                                 for field in fields(self) if field.name != "limits"}
        return Columns(**taken, limits={name: take(column)
                                        for name, column in self.limits.items()})


def of_observations(observations: Sequence[Observation]) -> Columns:
    """The same observations as columns (tests, and folds handed Observations)."""
    taken: dict[str, Any] = {field.name: [getattr(obs, field.name) for obs in observations]
                             for field in fields(Columns)
                             if field.name not in ("limits", "error_kind")}
    return Columns(
        **taken,
        error_kind=[None if obs.error_kind is None else obs.error_kind.value
                    for obs in observations],
        limits={name: [getattr(obs.rate_limits, name) for obs in observations]
                for name in LIMITS},
    )


_Frozen = TypeVar("_Frozen")


def frozen(cls: type[_Frozen], values: dict[str, Any]) -> _Frozen:
    """A frozen dataclass with every field given, built without its __init__, which sets each
    field through object.__setattr__ (frozen): for the 30 fields of an Observation and its
    RateLimits that was over half of reading a stored probe (3.5 us of 6), and a year is
    525,600 of them."""
    instance = object.__new__(cls)
    instance.__dict__.update(values)
    return instance


