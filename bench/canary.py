"""The standard canary as the benchmarks send it: the defaults a new monitor.toml gets."""

from __future__ import annotations

from monitor.domain import Provider, Target


def canary_target(base_url: str, *, stream: bool = False) -> Target:
    return Target(
        name="gpt-4o",
        provider=Provider.OPENAI_COMPATIBLE,
        base_url=base_url,
        model="gpt-4o",
        messages=({"role": "user", "content": "Reply with the single word: pong"},),
        params={"temperature": 0, "seed": 7, "max_completion_tokens": 16},
        stream=stream,
        timeout_ms=10_000,
        interval_ms=60_000,
        max_response_bytes=1 << 20,
        config_hash="0" * 64,
    )
