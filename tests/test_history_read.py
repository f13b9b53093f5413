"""Stored probes read back for detection (store/history.py) are the Observations their values
make: the reader builds them without the dataclass constructor, for speed, and must not differ
from it in any field."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from sqlalchemy import Engine

from monitor.domain import ErrorKind, Observation, ProbeResult, RateLimits
from monitor.store import history
from monitor.store.records import Recorder
from monitor.store.schema import float32
from monitor.store.shared import canonical_json
from tests.test_store import result


def expected(stored: ProbeResult) -> Observation:
    """The Observation of `stored`, through the constructor."""
    payload = stored.request_payload
    limits = stored.rate_limits
    return Observation(
        uid=stored.uid, started_at=stored.started_at, ok=stored.ok,
        error_kind=stored.error_kind, http_status=stored.http_status,
        requested_model=payload.get("model"), model=stored.model,
        # Measured values come back as float32 holds them (schema.Float32).
        system_fingerprint=stored.system_fingerprint, total_ms=float32(stored.total_ms),
        time_to_first_token_ms=float32(stored.time_to_first_token_ms),
        openai_processing_ms=float32(stored.openai_processing_ms),
        # The reader leaves out what no detector reads: the input and output token resets.
        rate_limits=dataclasses.replace(limits, reset_input_tokens_s=None,
                                        reset_output_tokens_s=None,
                                        reset_requests_s=float32(limits.reset_requests_s),
                                        reset_tokens_s=float32(limits.reset_tokens_s)),
        content=stored.content, finish_reason=stored.finish_reason,
        prompt_tokens=stored.usage.prompt_tokens,
        request_hash=hashlib.sha256(canonical_json(payload).encode()).hexdigest(),
        deterministic=payload.get("temperature") == 0 and payload.get("seed") is not None,
    )


def test_stored_probes_read_back_as_the_observations_their_values_make(engine: Engine) -> None:
    limits = RateLimits(limit_requests=500, limit_tokens=30_000, remaining_requests=499,
                        remaining_tokens=29_000, reset_requests_s=0.12, reset_tokens_s=0.038,
                        limit_input_tokens=10, remaining_input_tokens=9, limit_output_tokens=8,
                        remaining_output_tokens=7, reset_input_tokens_s=1.5,
                        reset_output_tokens_s=2.5)
    answered = result(rate_limits=limits, system_fingerprint="fp_1", openai_processing_ms=300.0,
                      time_to_first_token_ms=120.0)
    failed = result(ok=False, error_kind=ErrorKind.READ_TIMEOUT, http_status=None, choices=(),
                    total_ms=None)
    recorder = Recorder(engine)
    recorder.save(answered)
    recorder.save(failed)
    with engine.connect() as connection:
        read = [observation for _, observation in history.ObservationReader().all(
            connection, recorder.target_id(answered.target_name))]
    assert read == [expected(answered), expected(failed)]
    for observation in read:
        assert vars(observation).keys() == {f.name for f in dataclasses.fields(Observation)}
        assert vars(observation.rate_limits).keys() == {
            f.name for f in dataclasses.fields(RateLimits)}
        with pytest.raises(dataclasses.FrozenInstanceError):
            observation.ok = not observation.ok  # type: ignore[misc]
    # Read as columns (the bulk fold's way), the same probes make the same Observations.
    with engine.connect() as connection:
        [(ids, columns)] = history.ObservationReader().all_columns(
            connection, recorder.target_id(answered.target_name))
    assert len(ids) == len(columns) == 2
    assert [columns.observation(i) for i in range(2)] == read
    assert [vars(columns.observation(i)).keys() for i in range(2)] == [
        vars(observation).keys() for observation in read]
