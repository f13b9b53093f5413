"""What replay reads and writes: a stored request and its answer, replays stored linked to the
probe they re-sent (`probes.replay_of`), and batch runs whose items are claimed before sending.

A batch sends each stored request at most once. An item is claimed (`sending`, committed) before
its request goes out, and the replay is stored in the same transaction that marks the item
`done`. A process killed in between leaves the item `sending`. It is counted, but never sent
again, because the server may already have answered it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from monitor.domain import ProbeResult, ReplayState
from monitor.store.models import (
    CHOICES,
    ProbeAnswerRow,
    ProbeFacetRow,
    ProbeRow,
    ReplayItemRow,
    ReplayRunRow,
    RequestPayloadRow,
    TargetConfigRow,
    TargetRow,
)
from monitor.store.records import _probe_values
from monitor.store.schema import FACET_FIELDS
from monitor.store.shared import canonical_json, facet_digest, get_or_create

# Ids per IN (...) list: far below SQLite's 32,766 bound variables.
_CHUNK = 5000


@dataclass(frozen=True)
class StoredAnswer:
    """What a replay is compared on, read the same way for an original and for its replays."""

    probe_id: int
    target: str
    started_at: datetime
    ok: bool
    error_kind: str | None
    error_detail: str | None
    http_status: int | None
    model: str | None
    system_fingerprint: str | None
    finish_reason: str | None
    content: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    total_ms: float | None
    time_to_first_token_ms: float | None
    limit_requests: int | None
    remaining_requests: int | None
    limit_tokens: int | None
    remaining_tokens: int | None
    replay_of: int | None


@dataclass(frozen=True)
class StoredRequest:
    """A stored probe's request exactly as it was sent, with the answer it got."""

    payload: dict[str, Any]
    answer: StoredAnswer


@dataclass(frozen=True)
class RunSpec:
    """What a batch replay re-sends; `key` is the identity of the command that asked for it."""

    key: str
    source_target_id: int
    destination_target_id: int
    since_at: datetime | None
    until_at: datetime | None
    max_probes: int | None
    # At most this many, spread evenly over the range (a sample of a day of traffic) rather
    # than the oldest `max_probes`.
    sample: int | None = None


@dataclass(frozen=True)
class Run:
    id: int
    items: int
    resumed: bool  # an unfinished run of the same command was found and continues


@dataclass(frozen=True)
class Claim:
    item_id: int
    probe_id: int  # the original
    request_payload_id: int


_ANSWER = (
    ProbeRow.id, TargetRow.name, ProbeRow.started_at, ProbeRow.ok, ProbeRow.error_kind,
    ProbeRow.error_detail, ProbeRow.http_status, ProbeFacetRow.model,
    ProbeFacetRow.system_fingerprint, ProbeFacetRow.finish_reason, CHOICES,
    ProbeRow.prompt_tokens, ProbeRow.completion_tokens, ProbeRow.total_tokens,
    ProbeRow.total_ms, ProbeRow.time_to_first_token_ms, ProbeFacetRow.ratelimit_limit_requests,
    ProbeRow.ratelimit_remaining_requests, ProbeFacetRow.ratelimit_limit_tokens,
    ProbeRow.ratelimit_remaining_tokens, ProbeRow.replay_of,
)
_WITH_FACET = (ProbeFacetRow, ProbeFacetRow.id == ProbeRow.facet_id)
_WITH_ANSWER = (ProbeAnswerRow, ProbeAnswerRow.id == ProbeRow.answer_id)


def _answer(row: Any) -> StoredAnswer:
    choices = row.choices or []
    return StoredAnswer(
        probe_id=row.id, target=row.name, started_at=row.started_at, ok=row.ok,
        error_kind=row.error_kind, error_detail=row.error_detail, http_status=row.http_status,
        model=row.model, system_fingerprint=row.system_fingerprint,
        finish_reason=row.finish_reason,
        content=choices[0].get("content") if choices else None,
        prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        total_tokens=row.total_tokens, total_ms=row.total_ms,
        time_to_first_token_ms=row.time_to_first_token_ms,
        limit_requests=row.ratelimit_limit_requests,
        remaining_requests=row.ratelimit_remaining_requests,
        limit_tokens=row.ratelimit_limit_tokens,
        remaining_tokens=row.ratelimit_remaining_tokens, replay_of=row.replay_of,
    )


def answers(engine: Engine, ids: Iterable[int]) -> dict[int, StoredAnswer]:
    """The stored answers of these probes, by probe id (missing ids are left out)."""
    wanted = sorted(set(ids))
    found: dict[int, StoredAnswer] = {}
    with engine.connect() as connection:
        for start in range(0, len(wanted), _CHUNK):
            query = (select(*_ANSWER).join(TargetRow, TargetRow.id == ProbeRow.target_id)
                     .join(*_WITH_FACET).outerjoin(*_WITH_ANSWER)
                     .where(ProbeRow.id.in_(wanted[start:start + _CHUNK])))
            found.update((row.id, _answer(row)) for row in connection.execute(query))
    return found


def stored_request(engine: Engine, probe_id: int) -> StoredRequest | None:
    query = (select(*_ANSWER, RequestPayloadRow.payload)
             .join(TargetRow, TargetRow.id == ProbeRow.target_id).join(*_WITH_FACET)
             .outerjoin(*_WITH_ANSWER)
             .join(RequestPayloadRow, RequestPayloadRow.id == ProbeRow.request_payload_id)
             .where(ProbeRow.id == probe_id))
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else StoredRequest(row.payload, _answer(row))


def payload(engine: Engine, request_payload_id: int) -> dict[str, Any]:
    with engine.connect() as connection:
        found: dict[str, Any] = connection.execute(
            select(RequestPayloadRow.payload).where(RequestPayloadRow.id == request_payload_id)
        ).scalar_one()
    return found


_LISTED = (ProbeRow.id, ProbeRow.replay_of, TargetRow.name, ProbeRow.started_at, ProbeRow.ok,
           ProbeRow.error_kind, ProbeRow.http_status, ProbeFacetRow.model,
           ProbeFacetRow.system_fingerprint, ProbeRow.total_ms)


def listed(connection: Connection, since: datetime, until: datetime, target_ids: Sequence[int],
           newest: int) -> list[Any]:
    """The `newest` replays sent to the targets in [since, until), oldest first, as rows of
    _LISTED, read through a partial index of replays only (models.ProbeRow)."""
    query = (select(*_LISTED).join(TargetRow, TargetRow.id == ProbeRow.target_id)
             .join(*_WITH_FACET)
             .where(ProbeRow.replay_of.is_not(None), ProbeRow.target_id.in_(target_ids),
                    ProbeRow.started_at >= since, ProbeRow.started_at < until)
             .order_by(ProbeRow.started_at.desc(), ProbeRow.id.desc()).limit(newest))
    return list(reversed(connection.execute(query).all()))


class LinkedWriter:
    """Stores replays as probes linked to their original, one transaction each; remembers the
    ids of the targets, configurations and payloads it has written. Safe to share between
    threads: an id is remembered only once the transaction that made it has committed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ids: dict[tuple[Any, ...], int] = {}

    def save(self, result: ProbeResult, config: dict[str, Any], replay_of: int,
             item_id: int | None = None, rate_limited: int = 0) -> int:
        """Store the replay and return its probe id; with `item_id`, mark that batch item done
        in the same transaction."""
        learnt: dict[tuple[Any, ...], int] = {}
        with self.engine.begin() as connection:
            probe_id = self._insert(connection, learnt, result, config, replay_of)
            if item_id is not None:
                connection.execute(_DONE, {"item_id": item_id, "replay_probe_id": probe_id,
                                           "waits": rate_limited})
        self._ids.update(learnt)
        return probe_id

    def _insert(self, connection: Connection, learnt: dict[tuple[Any, ...], int],
                result: ProbeResult, config: dict[str, Any], replay_of: int) -> int:
        def known(cache_key: tuple[Any, ...], table: Table, key: dict[str, Any],
                  values: dict[str, Any]) -> int:
            found = self._ids.get(cache_key) or learnt.get(cache_key)
            if found is None:
                found = learnt[cache_key] = get_or_create(connection, table, key, values)
            return found

        now = datetime.now(UTC)
        target_id = known(("target", result.target_name), TargetRow.__table__,
                          {"name": result.target_name}, {"created_at": now})
        config_id = known(("config", target_id, result.config_hash), TargetConfigRow.__table__,
                          {"target_id": target_id, "config_hash": result.config_hash},
                          {"config": config, "first_seen_at": now})
        digest = hashlib.sha256(canonical_json(result.request_payload).encode()).hexdigest()
        payload_id = known(("payload", digest), RequestPayloadRow.__table__, {"sha256": digest},
                           {"payload": result.request_payload})
        values = _probe_values(result, target_id, config_id, payload_id)
        facet = {name: values.pop(name) for name in FACET_FIELDS}
        digest = facet_digest(list(facet.values()))
        values["facet_id"] = known(("facet", digest), ProbeFacetRow.__table__,
                                   {"sha256": digest}, facet)
        values["replay_of"] = replay_of  # its answer stays on it: replays are few
        return int(connection.execute(
            insert(ProbeRow).returning(ProbeRow.id), values).scalar_one())


# --- batch runs -----------------------------------------------------------------------------


def open_run(engine: Engine, spec: RunSpec, now: datetime) -> Run:
    """The unfinished run of this command, or a new one whose items (the source target's
    stored canaries in range, oldest first, never earlier replays) are fixed now: probes stored
    later, the run's own replays among them, are not part of it."""
    found = _open_run(engine, spec.key)
    if found is not None:
        return found
    # Recorded traffic of other endpoints than chat (request_path set) has nothing to re-send.
    query = select(ProbeRow.id, ProbeRow.request_payload_id).where(
        ProbeRow.target_id == spec.source_target_id, ProbeRow.replay_of.is_(None),
        ProbeRow.request_path.is_(None))
    if spec.since_at is not None:
        query = query.where(ProbeRow.started_at >= spec.since_at)
    if spec.until_at is not None:
        query = query.where(ProbeRow.started_at < spec.until_at)
    query = query.order_by(ProbeRow.started_at, ProbeRow.id).limit(spec.max_probes)
    try:
        with engine.begin() as connection:
            originals = connection.execute(query).all()
            if spec.sample is not None and len(originals) > spec.sample:
                step = len(originals) / spec.sample
                originals = [originals[int(i * step)] for i in range(spec.sample)]
            run_id = connection.execute(insert(ReplayRunRow).returning(ReplayRunRow.id), {
                "key": spec.key, "open_key": spec.key,
                "source_target_id": spec.source_target_id,
                "destination_target_id": spec.destination_target_id,
                "since_at": spec.since_at, "until_at": spec.until_at,
                "max_probes": spec.max_probes, "items": len(originals), "created_at": now,
            }).scalar_one()
            rows = [{"run_id": run_id, "probe_id": probe_id, "request_payload_id": payload_id,
                     "position": position, "state": ReplayState.PENDING.value,
                     "rate_limited": 0}
                    for position, (probe_id, payload_id) in enumerate(originals)]
            for start in range(0, len(rows), _CHUNK):
                connection.execute(insert(ReplayItemRow), rows[start:start + _CHUNK])
    except IntegrityError:
        # The same command started at the same moment elsewhere: join its run.
        found = _open_run(engine, spec.key)
        if found is None:
            raise
        return found
    return Run(run_id, len(originals), resumed=False)


def _open_run(engine: Engine, key: str) -> Run | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(ReplayRunRow.id, ReplayRunRow.items)
            .where(ReplayRunRow.open_key == key)).first()
    return None if row is None else Run(row.id, row.items, resumed=True)


# Built once: constructing a statement costs more than running it on this small table.
_NEXT = (select(ReplayItemRow.id)
         .where(ReplayItemRow.run_id == bindparam("run"),
                ReplayItemRow.state == ReplayState.PENDING.value)
         .order_by(ReplayItemRow.position).limit(1)
         # Another process working the same run skips the row this one is taking.
         .with_for_update(skip_locked=True))
_CLAIM = (update(ReplayItemRow)
          # Conditional: on SQLite (no row locks) another process may have taken it first.
          .where(ReplayItemRow.id == _NEXT.scalar_subquery(),
                 ReplayItemRow.state == ReplayState.PENDING.value)
          .values(state=ReplayState.SENDING.value, claimed_at=bindparam("now"))
          .returning(ReplayItemRow.id, ReplayItemRow.probe_id, ReplayItemRow.request_payload_id))
_DONE = (update(ReplayItemRow).where(ReplayItemRow.id == bindparam("item_id"))
         .values(state=ReplayState.DONE.value, replay_probe_id=bindparam("replay_probe_id"),
                 rate_limited=bindparam("waits")))


def claim(engine: Engine, run_id: int, now: datetime) -> Claim | None:
    """Take the run's next pending item (oldest original first); None when none is left. The
    claim is committed before the caller sends anything."""
    with engine.begin() as connection:
        while True:
            row = connection.execute(_CLAIM, {"run": run_id, "now": now}).first()
            if row is not None:
                return Claim(row.id, row.probe_id, row.request_payload_id)
            # Nothing taken: none left, or another process took the one picked.
            if connection.execute(_NEXT, {"run": run_id}).first() is None:
                return None


def release(engine: Engine, item_id: int) -> None:
    """Give a claimed item back: its request was refused (429), so sending it later is the
    retry the server asked for, not a second answer."""
    with engine.begin() as connection:
        connection.execute(update(ReplayItemRow).where(ReplayItemRow.id == item_id)
                           .values(state=ReplayState.PENDING.value, claimed_at=None))


def finish(engine: Engine, run_id: int, now: datetime) -> None:
    """Close the run: the same command run again starts a new one."""
    with engine.begin() as connection:
        connection.execute(update(ReplayRunRow).where(ReplayRunRow.id == run_id)
                           .values(open_key=None, finished_at=now))


def progress(engine: Engine, run_id: int) -> dict[ReplayState, int]:
    """Items per state."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(ReplayItemRow.state, func.count()).where(ReplayItemRow.run_id == run_id)
            .group_by(ReplayItemRow.state)).all()
    counts = dict.fromkeys(ReplayState, 0)
    counts.update({ReplayState(state): count for state, count in rows})
    return counts


def run_pairs(engine: Engine, run_id: int) -> list[tuple[StoredAnswer, StoredAnswer, int]]:
    """(original, replay, 429s waited out) for every done item, in item order."""
    with engine.connect() as connection:
        items: Sequence[Any] = connection.execute(
            select(ReplayItemRow.probe_id, ReplayItemRow.replay_probe_id,
                   ReplayItemRow.rate_limited)
            .where(ReplayItemRow.run_id == run_id,
                   ReplayItemRow.state == ReplayState.DONE.value)
            .order_by(ReplayItemRow.position)).all()
    found = answers(engine, [i.probe_id for i in items] + [i.replay_probe_id for i in items
                                                          if i.replay_probe_id is not None])
    return [(found[i.probe_id], found[i.replay_probe_id], i.rate_limited) for i in items
            if i.probe_id in found and i.replay_probe_id in found]
