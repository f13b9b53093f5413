"""Write ProbeResults, and the named queries that commands read them back with.

The store knows nothing of HTTP: it takes plain ProbeResults and gives back plain rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, or_, select
from sqlalchemy.exc import IntegrityError

from monitor.domain import Choice, ProbeResult, RateLimits
from monitor.store import blobs, check_results, codec, leases
from monitor.store.db import upsert
from monitor.store.probe_insert import ProbeInsert
from monitor.store.schema import (
    CANARY,
    TargetKind,
    probes,
    request_payloads,
    rollup_state,
    rollup_totals,
    target_configs,
    targets,
)
from monitor.store.scrub import scrubbed, storable
from monitor.store.shared import AnswerIds, FacetIds, canonical_json, get_or_create


class Recorder:
    """Saves probe results, one transaction each; remembers the ids of targets, configurations,
    payloads, facets and answers it has seen so a steady stream of canaries costs one INSERT
    per probe."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._target_ids: dict[str, int] = {}
        self._config_ids: dict[tuple[str, str], int] = {}
        self._payload_ids: dict[str, int] = {}
        self._facet_ids = FacetIds()
        self._answer_ids = AnswerIds()
        self._encoders = blobs.Encoders()
        self._probe_insert: ProbeInsert | None = None

    def register(self, name: str, config_hash: str, config: dict[str, Any], *,
                 traffic: bool = False) -> None:
        """Make sure a target and its current configuration exist (idempotent)."""
        with self.engine.begin() as connection:
            target_id = self._target_id(connection, name, traffic)
            self._config_id(connection, name, target_id, config_hash, config)

    def save(self, result: ProbeResult, config: dict[str, Any] | None = None,
             slot_at: datetime | None = None) -> int:
        """Store one probe and return its id; with `slot_at`, mark the target's slot then as
        probed by it in the same transaction (leases.settle). A uid already stored returns the
        existing id, which is what makes replaying a spool after a crash safe."""
        cached = bool(self._target_ids or self._config_ids or self._payload_ids
                      or self._facet_ids or self._answer_ids)
        try:
            return self._insert(result, config, slot_at)
        except IntegrityError:
            existing = self.probe_id(result.uid)
            if existing is not None:
                return existing
            self._forget()
            if not cached:
                raise
        except Exception:
            # Ids cached inside the failed transaction (a new payload's) were rolled back
            # with it: kept, they would make the next result fail on a foreign key.
            self._forget()
            raise
        # A cached id may point at a row deleted since: once more with fresh ids, so that
        # only a result refused on its own merits is reported as refused.
        try:
            return self._insert(result, config, slot_at)
        except Exception:
            self._forget()
            raise

    def _insert(self, result: ProbeResult, config: dict[str, Any] | None,
                slot_at: datetime | None) -> int:
        with self.engine.begin() as connection:
            target_id = self._target_id(connection, result.target_name, result.traffic)
            config_id = self._config_id(
                connection, result.target_name, target_id, result.config_hash, config
            )
            payload_id = self._payload_id(connection, result.request_payload)
            dictionary = self._encoders.for_result(connection, config_id, result)
            row = _probe_values(result, target_id, config_id, payload_id, dictionary)
            self._shared(connection, row)
            [probe_id] = self._statement().execute(connection, [row])
            check_results.insert(connection, [(result, probe_id, target_id)])
            if slot_at is not None:
                leases.settle_in(connection, [(target_id, slot_at, result.uid)])
            return probe_id

    def save_batch(self, batch: Sequence[tuple[ProbeResult, dict[str, Any] | None]],
                   slots: Sequence[datetime | None] = ()) -> list[int]:
        """Store results with their configs in one transaction and return their ids in order
        (the group writer's commit); `slots`, where given, the slot each one settles, as in
        `save`. Any failure (a uid already stored included) fails the whole batch; the caller
        then stores the results one by one to give each its verdict."""
        try:
            with self.engine.begin() as connection:
                rows = []
                for result, config in batch:
                    target_id = self._target_id(connection, result.target_name,
                                                result.traffic)
                    config_id = self._config_id(
                        connection, result.target_name, target_id, result.config_hash, config
                    )
                    payload_id = self._payload_id(connection, result.request_payload)
                    dictionary = self._encoders.for_result(connection, config_id, result)
                    row = _probe_values(result, target_id, config_id, payload_id, dictionary)
                    self._shared(connection, row)
                    rows.append(row)
                ids = self._statement().execute(connection, rows)
                check_results.insert(connection, [(result, probe_id, row["target_id"])
                                                  for (result, _), probe_id, row
                                                  in zip(batch, ids, rows)])
                leases.settle_in(connection, [
                    (row["target_id"], slot_at, result.uid)
                    for (result, _), row, slot_at in zip(batch, rows, slots)
                    if slot_at is not None])
                return ids
        except Exception:
            self._forget()  # ids cached inside the failed transaction may not exist
            raise

    def save_many(self, results: Sequence[ProbeResult]) -> None:
        """Store a batch in one transaction (draining a spool). Results whose uid is already
        stored are skipped, so a batch handed over twice is stored once."""
        if not results:
            return
        try:
            self._insert_many(results)
        except Exception:
            self._forget()  # ids cached inside the failed transaction may not exist
            raise

    def _insert_many(self, results: Sequence[ProbeResult]) -> None:
        with self.engine.begin() as connection:
            rows = []
            for result in results:
                target_id = self._target_id(connection, result.target_name, result.traffic)
                config_id = self._config_id(
                    connection, result.target_name, target_id, result.config_hash, None
                )
                payload_id = self._payload_id(connection, result.request_payload)
                dictionary = self._encoders.for_result(connection, config_id, result)
                row = _probe_values(result, target_id, config_id, payload_id, dictionary)
                self._shared(connection, row)
                rows.append(row)
            connection.execute(
                upsert(connection.dialect, probes).on_conflict_do_nothing(
                    index_elements=["uid"]), rows
            )
            check_results.insert_by_uid(connection, [(r, row["target_id"]) for r, row in zip(results, rows)])

    def _shared(self, connection: Any, row: dict[str, Any]) -> None:
        """Refer a probe row to its facet, and to its answer when that repeats."""
        self._facet_ids.take(connection, row)
        self._answer_ids.take(connection, row)

    def _statement(self) -> ProbeInsert:
        if self._probe_insert is None:
            self._probe_insert = ProbeInsert(self.engine.dialect)
        return self._probe_insert

    def target_id(self, name: str) -> int:
        """The target's row id (creating the row if needed); cached after the first call."""
        if name in self._target_ids:
            return self._target_ids[name]
        with self.engine.begin() as connection:
            return self._target_id(connection, name)

    def probe_id(self, uid: str) -> int | None:
        with self.engine.connect() as connection:
            return connection.execute(select(probes.c.id).where(probes.c.uid == uid)).scalar()

    def _forget(self) -> None:
        self._target_ids.clear()
        self._config_ids.clear()
        self._payload_ids.clear()
        self._facet_ids.forget()
        self._answer_ids.forget()
        self._encoders.forget()

    def _target_id(self, connection: Any, name: str, traffic: bool = False) -> int:
        """The target's id, created on first use: a canary, or with `traffic` a target of
        recorded traffic (whose names, "route/model", no canary can take: canary names have
        no "/")."""
        if name in self._target_ids:
            return self._target_ids[name]
        # A canary takes the column's default ('canary').
        kind = {"kind": TargetKind.TRAFFIC} if traffic else {}
        found = get_or_create(
            connection, targets, {"name": name}, {"created_at": datetime.now(UTC), **kind}
        )
        self._target_ids[name] = found
        return found

    def _config_id(
        self,
        connection: Any,
        name: str,
        target_id: int,
        config_hash: str,
        config: dict[str, Any] | None,
    ) -> int:
        key = (name, config_hash)
        if key in self._config_ids:
            return self._config_ids[key]
        found = get_or_create(
            connection,
            target_configs,
            {"target_id": target_id, "config_hash": config_hash},
            # Known to the probe's process but not to a later one draining its spool: then
            # the row still marks the change.
            {"config": storable(config) if config is not None else {},
             "first_seen_at": datetime.now(UTC)},
        )
        self._config_ids[key] = found
        return found

    def _payload_id(self, connection: Any, payload: dict[str, Any]) -> int:
        # Cached by repr(), which tells JSON values apart as exactly as the canonical text
        # (1, 1.0 and True included) at half its cost, for the payload every canary repeats.
        seen = repr(payload)
        if seen in self._payload_ids:
            return self._payload_ids[seen]
        digest = hashlib.sha256(canonical_json(payload).encode()).hexdigest()
        found = get_or_create(
            connection, request_payloads, {"sha256": digest}, {"payload": storable(payload)}
        )
        self._payload_ids[seen] = found
        return found


def _probe_values(
    result: ProbeResult, target_id: int, config_id: int, payload_id: int,
    dictionary: codec.Dictionary | None = None,
) -> dict[str, Any]:
    """The probe's row, its raw bytes compressed against `dictionary` if any (blobs.encoded),
    with its facet's values among the columns: FacetIds.take() turns them into facet_id."""
    limits, usage = result.rate_limits, result.usage
    values: dict[str, Any] = {
        "uid": result.uid,
        "target_id": target_id,
        "target_config_id": config_id,
        "request_payload_id": payload_id,
        "started_at": result.started_at,
        "stream": result.stream,
        "ok": result.ok,
        "error_kind": result.error_kind.value if result.error_kind else None,
        "error_detail": result.error_detail,
        "http_status": result.http_status,
        "time_to_headers_ms": result.time_to_headers_ms,
        "total_ms": result.total_ms,
        "time_to_first_token_ms": result.time_to_first_token_ms,
        "output_tokens_per_s": result.output_tokens_per_s,
        "openai_processing_ms": result.openai_processing_ms,
        "openai_version": result.openai_version,
        "openai_organization": result.openai_organization,
        "x_request_id": result.x_request_id,
        "retry_after_s": result.retry_after_s,
        **{f"ratelimit_{name}": value for name, value in vars(limits).items()},
        "response_id": result.response_id,
        "response_created_at": _timestamp(result.response_created),
        "model": result.model,
        "system_fingerprint": result.system_fingerprint,
        "service_tier": result.service_tier,
        "finish_reason": result.finish_reason,
        # vars(), not asdict() (its deep copy was a fifth of the write path's time).
        "choices": [_choice(choice) for choice in result.choices] if result.choices else None,
        "stream_chunks": result.stream_chunks,
        **vars(usage),
        "raw_response_bytes": len(result.raw_response),
        "credential_hash": result.credential_hash,
        "request_path": result.request_path,
        "proxy_added_ms": result.proxy_added_ms,
        "request_truncated": result.request_truncated,
        "response_truncated": result.response_truncated,
    }
    # Compressed after scrubbing: decoding takes the context from the columns as stored.
    return blobs.encoded(scrubbed(values), _storable_headers(result.response_headers),
                         result.raw_response, dictionary)


def _choice(choice: Choice) -> dict[str, Any]:
    """A choice as stored: `refusal`, `tool_calls` only when it has them (readers .get() them)."""
    skip = ("tool_calls",) if choice.refusal is not None else ("tool_calls", "refusal")
    stored = {key: value for key, value in vars(choice).items() if key not in skip}
    calls = {"tool_calls": [vars(call) for call in choice.tool_calls]} if choice.tool_calls else {}
    return {**stored, **calls}


def _storable_headers(headers: dict[str, str]) -> dict[str, str]:
    """storable(headers), without walking them when all is ASCII without NUL (nearly always)."""
    every = "".join(headers) + "".join(headers.values())
    if every.isascii() and "\x00" not in every:
        return headers
    scrubbed: dict[str, str] = storable(headers)
    return scrubbed


def _timestamp(created: int | None) -> datetime | None:
    """The body's unix `created` as a time; None if there is none or no calendar has it."""
    if created is None:
        return None
    try:
        return datetime.fromtimestamp(created, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def count_probes(engine: Engine) -> int:
    """How many probes the database holds, replays included, without reading every row: the
    totals of what the rollups folded (store/rollups.py), plus a count of the rest through
    indexes (probes above the watermark or in its gaps, and replays, which are never folded).
    While a daemon keeps the rollups up, the rest is a few seconds' probes.

    The watermark, its gaps and the totals are read in one statement, so they agree (a
    catch-up moves them in one transaction); probes folded after that read are counted as
    unfolded, which they were then, and no probe is ever deleted. A probe whose id appears
    after its gap expired (rollups.GAP_WAIT: a transaction open for an hour) is never folded,
    nor counted here."""
    with engine.connect() as connection:
        state = connection.execute(select(
            rollup_state.c.last_probe_id, rollup_state.c.gaps,
            select(func.coalesce(func.sum(rollup_totals.c.probes), 0)).scalar_subquery(),
        ).where(rollup_state.c.id == 1)).first()
        last, gaps, folded = (0, [], 0) if state is None else state
        unfolded = or_(probes.c.id > last, *[probes.c.id.between(lo, hi) for lo, hi, _ in gaps])
        rest = connection.execute(select(
            select(func.count()).where(CANARY, unfolded).scalar_subquery(),
            select(func.count()).where(probes.c.replay_of.is_not(None)).scalar_subquery(),
        )).one()
    return int(folded) + int(rest[0]) + int(rest[1])


def last_probes(engine: Engine) -> list[dict[str, Any]]:
    """The newest canary probe (not a replay) of every target: when, outcome, status, total
    ms. Each is found by walking its target's ids down from the newest (ix_probes_target_id_id)
    rather than grouping the whole history."""
    newest = (select(probes.c.id).where(probes.c.target_id == targets.c.id, CANARY)
              .order_by(probes.c.id.desc()).limit(1).correlate(targets).scalar_subquery())
    query = (
        select(targets.c.name, probes.c.started_at, probes.c.ok, probes.c.error_kind,
               probes.c.http_status, probes.c.total_ms)
        .join(probes, probes.c.id == newest)
        .where(targets.c.kind == TargetKind.CANARY)
        .order_by(targets.c.name)
    )
    with engine.connect() as connection:
        return [
            {"target": name, "started_at": started.isoformat(), "ok": ok,
             "error_kind": kind, "http_status": status, "total_ms": total_ms}
            for name, started, ok, kind, status, total_ms in connection.execute(query)
        ]


def target_id_of(engine: Engine, name: str) -> int | None:
    """The stored target's id, or None if it never probed."""
    with engine.connect() as connection:
        return connection.execute(select(targets.c.id).where(targets.c.name == name)).scalar()


def count_targets(engine: Engine, kind: str = TargetKind.CANARY) -> int:
    with engine.connect() as connection:
        return int(connection.execute(
            select(func.count(targets.c.id)).where(targets.c.kind == kind)).scalar_one())


def usage_since(engine: Engine, target_id: int, since: datetime) -> tuple[int, int]:
    """(probes sent, tokens used) by one target since `since`, for its daily budgets.
    Replays count: they are requests and tokens the target's account paid for, whatever
    they were sent for."""
    with engine.connect() as connection:
        requests, tokens = connection.execute(
            select(func.count(probes.c.id), func.coalesce(func.sum(probes.c.total_tokens), 0))
            .where(probes.c.target_id == target_id, probes.c.started_at >= since)
        ).one()
    return int(requests), int(tokens or 0)


@dataclass(frozen=True)
class NewestProbe:
    """A target's newest canary probe (replays are not the canary): when, how it went, and
    what it said about waiting (for the daemon's backoff rule)."""

    started_at: datetime
    ok: bool
    error_kind: str | None
    retry_after_s: float | None
    rate_limits: RateLimits


# Walks ix_probes_target_id_started_at backwards, past any replays, to the first canary probe.
_NEWEST = (
    select(probes.c.started_at, probes.c.ok, probes.c.error_kind, probes.c.retry_after_s,
           probes.c.ratelimit_reset_requests_s, probes.c.ratelimit_reset_tokens_s)
    .where(probes.c.target_id == bindparam("target_id"), probes.c.replay_of.is_(None))
    .order_by(probes.c.started_at.desc()).limit(1)
)


def newest_probe(connection: Connection, target_id: int) -> NewestProbe | None:
    row = connection.execute(_NEWEST, {"target_id": target_id}).first()
    if row is None:
        return None
    return NewestProbe(row.started_at, row.ok, row.error_kind, row.retry_after_s, RateLimits(
        reset_requests_s=row.ratelimit_reset_requests_s,
        reset_tokens_s=row.ratelimit_reset_tokens_s))
