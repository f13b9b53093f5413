"""Scenarios: everything the simulator's answers depend on, as one immutable, validated value.

A scenario file is an update over the defaults, and so is every POST /_sim/scenario: tables merge
key by key, while lists and values replace. The merged result is validated completely, so a bad
value is reported once, naming its source and key, and never reaches a request.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from monitor.errors import SimulatorError
from monitor.sim import faults

# What OpenAI's and Anthropic's aliases pointed at when this was written; any other model answers as requested.
DEFAULT_ALIASES: Mapping[str, str] = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-opus-4-0": "claude-opus-4-20250514",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
}


@dataclass(frozen=True)
class Fingerprint:
    value: str | None  # None: the server sends "system_fingerprint": null
    weight: float = 1.0


@dataclass(frozen=True)
class FingerprintRotation:
    """Every `every_requests` requests and every `every_s` seconds the pool's weights shift by one
    entry, so the dominant fingerprint moves along the pool and wraps around."""

    every_requests: int | None = None
    every_s: float | None = None

    def step(self, request_number: int, elapsed_s: float) -> int:
        steps = request_number // self.every_requests if self.every_requests else 0
        return steps + (int(elapsed_s // self.every_s) if self.every_s else 0)


@dataclass(frozen=True)
class SlowPeriod:
    """Latency times `factor` from `start_s` for `duration_s`, again every `every_s` if set."""

    start_s: float
    duration_s: float
    factor: float
    every_s: float | None = None

    def active(self, elapsed_s: float) -> bool:
        into_s = elapsed_s - self.start_s
        if into_s < 0:
            return False
        if self.every_s:
            into_s %= self.every_s
        return into_s < self.duration_s


@dataclass(frozen=True)
class Latency:
    base_ms: float = 0.0  # zero keeps test suites fast; demos and benchmarks set their own
    jitter_ms: float = 0.0  # uniform in [-jitter_ms, +jitter_ms]
    ttft_ms: float | None = None  # streams: delay before the first chunk; None means base_ms
    per_token_ms: float = 0.0  # streams: delay between content chunks
    slow_periods: tuple[SlowPeriod, ...] = ()

    def factor(self, elapsed_s: float) -> float:
        product = 1.0
        for period in self.slow_periods:
            if period.active(elapsed_s):
                product *= period.factor
        return product


@dataclass(frozen=True)
class RateLimits:
    # OpenAI's tier-5 gpt-4o budgets: realistic headers that a test or benchmark never exhausts.
    requests_per_window: int = 10_000
    tokens_per_window: int = 30_000_000
    window_s: float = 60.0


@dataclass(frozen=True)
class Faults:
    rate: float = 0.0  # probability that a request gets one of `kinds`
    kinds: tuple[str, ...] = ("http_500", "http_503")  # the transient errors OpenAI sends most
    hang_s: float = 300.0  # longer than any sane client timeout


@dataclass(frozen=True)
class Scenario:
    seed: int | None = None  # Simulator(seed=...) wins; neither set means a random seed per run
    models: tuple[str, ...] | None = None  # None accepts any model; a list answers others 404
    aliases: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ALIASES))
    # The fingerprint in the real OpenAI exchange under tests/fixtures.
    fingerprints: tuple[Fingerprint, ...] = (Fingerprint("fp_6ec83003ad"),)
    fingerprint_rotation: FingerprintRotation = FingerprintRotation()
    latency: Latency = Latency()
    rate_limits: RateLimits = RateLimits()
    faults: Faults = Faults()
    output_variant: int = 0  # changes every canned answer: output drift on demand
    hidden_system_prompt_tokens: int = 0  # added to prompt_tokens: a hidden prompt or tokenizer change
    service_tier: str = "default"
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    # A prompt (the last user message, exactly) -> the answer text, for canaries with checks;
    # a queued override's `content` still wins.
    answers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "scenario") -> Scenario:
        """The defaults updated with `data` (TOML-shaped), validated; errors name `source`."""
        return cls().updated(data, source)

    def updated(self, changes: Mapping[str, Any], source: str) -> Scenario:
        """This scenario with `changes` merged in: tables by key, lists and values replaced."""
        if not isinstance(changes, Mapping):
            _Check(source).fail("", "a table of scenario keys", changes)
        return _parse(_merge(self.to_dict(), changes), _Check(source))

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON shape that from_dict reads: the field names are the schema."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Override:
    """One-shot changes for one upcoming request, queued by POST /_sim/enqueue."""

    model: str | None = None  # only a request for this model (or Azure deployment) takes it
    fault: str | None = None
    system_fingerprint: Fingerprint | None = None  # Fingerprint(None) sends null
    latency_ms: float | None = None  # replaces the scenario's latency (plain) or TTFT (stream)
    snapshot: str | None = None  # the `model` the answer reports
    content: str | None = None  # the answer text of every choice
    output_variant: int | None = None
    hidden_system_prompt_tokens: int | None = None

    @classmethod
    def from_dict(cls, data: object, source: str) -> Override:
        check = _Check(source)
        table = check.table(data, "", _OVERRIDE_KEYS)
        fault = table.get("fault")
        fingerprint = table.get("system_fingerprint", ...)
        return cls(
            model=check.optional(table.get("model"), "model", check.string),
            fault=None if fault is None else check.fault(fault, "fault"),
            system_fingerprint=(
                None if fingerprint is ... else
                Fingerprint(check.optional(fingerprint, "system_fingerprint", check.string))
            ),
            latency_ms=check.optional(table.get("latency_ms"), "latency_ms", check.number),
            snapshot=check.optional(table.get("snapshot"), "snapshot", check.string),
            content=check.optional(table.get("content"), "content", check.string),
            output_variant=check.optional(
                table.get("output_variant"), "output_variant", check.integer),
            hidden_system_prompt_tokens=check.optional(
                table.get("hidden_system_prompt_tokens"), "hidden_system_prompt_tokens",
                check.integer),
        )


_OVERRIDE_KEYS = (
    "model", "fault", "system_fingerprint", "latency_ms", "snapshot", "content", "output_variant",
    "hidden_system_prompt_tokens",
)


def load_scenario(path: str) -> Scenario:
    """Read a scenario TOML file; any problem is a SimulatorError naming the file and key."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise SimulatorError(f"{path}: cannot read the scenario: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SimulatorError(f"{path}: not valid TOML: {error}") from None
    return Scenario.from_dict(data, path)


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_T = TypeVar("_T")


class _Check:
    """Validators that raise SimulatorError as `source: key: expected ..., got ...`."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, expected: str, got: object, *, verbatim: bool = False) -> NoReturn:
        where = f"{self.source}: {key}" if key else self.source
        shown = got if verbatim else repr(got)
        raise SimulatorError(f"{where}: expected {expected}, got {shown}")

    def table(self, value: object, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(key, "a table", value)
        for name in value:
            if name not in allowed:
                where = f"{key}.{name}" if key else str(name)
                self.fail(where, f"one of {', '.join(allowed)}", "an unknown key", verbatim=True)
        return value

    def number(self, value: object, key: str) -> float:
        # bool is an int in Python, but `base_ms = true` is a mistake, not 1 ms.
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.fail(key, "a number >= 0", value)
        return float(value)

    def span(self, value: object, key: str) -> float:
        """A number > 0: a window, a period or a factor, where zero would divide or freeze."""
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self.fail(key, "a number > 0", value)
        return float(value)

    def integer(self, value: object, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(key, "an integer >= 0", value)
        return value

    def count(self, value: object, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(key, "an integer >= 1", value)
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str):
            self.fail(key, "a string", value)
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        # Tuples come from to_dict(); lists from TOML and JSON.
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            self.fail(key, "a list of strings", value)
        return tuple(value)

    def entries(self, value: object, key: str) -> list[object]:
        if not isinstance(value, list | tuple):
            self.fail(key, "an array of tables", value)
        return list(value)

    def fault(self, value: object, key: str) -> str:
        name = faults.canonical(value) if isinstance(value, str) else None
        if name is None:
            self.fail(key, "a fault name such as 'http_503' or 'hang'", value)
        return name

    def optional(self, value: object, key: str, parse: Callable[[object, str], _T]) -> _T | None:
        return None if value is None else parse(value, key)


_KEYS = (
    "seed", "models", "aliases", "fingerprints", "fingerprint_rotation", "latency", "rate_limits",
    "faults", "output_variant", "hidden_system_prompt_tokens", "service_tier", "api_keys", "answers",
)


def _parse(data: Mapping[str, Any], check: _Check) -> Scenario:
    check.table(data, "", _KEYS)
    seed = data["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        check.fail("seed", "an integer", seed)
    aliases, answers = data["aliases"], data["answers"]
    for key, table in (("aliases", aliases), ("answers", answers)):
        if not isinstance(table, Mapping):
            check.fail(key, "a table", table)
    return Scenario(
        seed=seed,
        models=check.optional(data["models"], "models", check.strings),
        aliases={name: check.string(target, f"aliases.{name}") for name, target in aliases.items()},
        fingerprints=_fingerprints(data["fingerprints"], check),
        fingerprint_rotation=_rotation(data["fingerprint_rotation"], check),
        latency=_latency(data["latency"], check),
        rate_limits=_rate_limits(data["rate_limits"], check),
        faults=_faults(data["faults"], check),
        output_variant=check.integer(data["output_variant"], "output_variant"),
        hidden_system_prompt_tokens=check.integer(
            data["hidden_system_prompt_tokens"], "hidden_system_prompt_tokens"),
        service_tier=check.string(data["service_tier"], "service_tier"),
        api_keys=check.strings(data["api_keys"], "api_keys"),
        answers={prompt: check.string(text, f"answers.{prompt}") for prompt, text in answers.items()},
    )


# After the merge over the defaults every table below has all its keys; only entries of arrays
# of tables (fingerprints, slow periods) come from the user alone and may omit optional keys.


def _fingerprints(value: object, check: _Check) -> tuple[Fingerprint, ...]:
    pool = []
    for index, entry in enumerate(check.entries(value, "fingerprints")):
        key = f"fingerprints[{index}]"
        # TOML has no null: an entry without `value` is a server that sends null.
        table = check.table(entry, key, ("value", "weight"))
        pool.append(Fingerprint(
            check.optional(table.get("value"), f"{key}.value", check.string),
            check.number(table.get("weight", 1.0), f"{key}.weight"),
        ))
    if pool and not any(fingerprint.weight for fingerprint in pool):
        check.fail("fingerprints", "at least one weight > 0", "only zero weights", verbatim=True)
    return tuple(pool)


def _rotation(value: object, check: _Check) -> FingerprintRotation:
    table = check.table(value, "fingerprint_rotation", ("every_requests", "every_s"))
    return FingerprintRotation(
        every_requests=check.optional(
            table["every_requests"], "fingerprint_rotation.every_requests", check.count),
        every_s=check.optional(table["every_s"], "fingerprint_rotation.every_s", check.span),
    )


def _latency(value: object, check: _Check) -> Latency:
    table = check.table(
        value, "latency", ("base_ms", "jitter_ms", "ttft_ms", "per_token_ms", "slow_periods"))
    periods = []
    for index, entry in enumerate(check.entries(table["slow_periods"], "latency.slow_periods")):
        key = f"latency.slow_periods[{index}]"
        period = check.table(entry, key, ("start_s", "duration_s", "factor", "every_s"))
        periods.append(SlowPeriod(
            start_s=check.number(period.get("start_s", 0.0), f"{key}.start_s"),
            duration_s=check.span(period.get("duration_s"), f"{key}.duration_s"),
            factor=check.span(period.get("factor"), f"{key}.factor"),
            every_s=check.optional(period.get("every_s"), f"{key}.every_s", check.span),
        ))
    return Latency(
        base_ms=check.number(table["base_ms"], "latency.base_ms"),
        jitter_ms=check.number(table["jitter_ms"], "latency.jitter_ms"),
        ttft_ms=check.optional(table["ttft_ms"], "latency.ttft_ms", check.number),
        per_token_ms=check.number(table["per_token_ms"], "latency.per_token_ms"),
        slow_periods=tuple(periods),
    )


def _rate_limits(value: object, check: _Check) -> RateLimits:
    table = check.table(
        value, "rate_limits", ("requests_per_window", "tokens_per_window", "window_s"))
    return RateLimits(
        requests_per_window=check.count(
            table["requests_per_window"], "rate_limits.requests_per_window"),
        tokens_per_window=check.count(table["tokens_per_window"], "rate_limits.tokens_per_window"),
        window_s=check.span(table["window_s"], "rate_limits.window_s"),
    )


def _faults(value: object, check: _Check) -> Faults:
    table = check.table(value, "faults", ("rate", "kinds", "hang_s"))
    rate = table["rate"]
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        check.fail("faults.rate", "a probability between 0 and 1", rate)
    kinds = check.strings(table["kinds"], "faults.kinds")
    if not kinds:
        check.fail("faults.kinds", "at least one fault name", [])
    return Faults(
        rate=float(rate),
        kinds=tuple(check.fault(kind, f"faults.kinds[{i}]") for i, kind in enumerate(kinds)),
        hang_s=check.number(table["hang_s"], "faults.hang_s"),
    )
