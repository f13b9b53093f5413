"""What detection reads and writes: a target's probes as Observations (in the order they were
stored), or as columns of them for a long history folded in bulk, the detectors' saved state,
and the DriftEvents they produced.

Probes are folded in id order (the order the database took them), not by started_at: a probe
that waited in the spool during an outage is stored late, and folding by id is the one order
that live detection and a re-run over stored history can both follow exactly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, case, func, select, true, update

from monitor.detect.columns import Columns, frozen, of_observations
from monitor.domain import (
    CheckResult,
    DetectionThresholds,
    DriftEvent,
    ErrorKind,
    Observation,
    RateLimits,
)
from monitor.store import check_results
from monitor.store.db import upsert
from monitor.store.schema import (
    CANARY,
    detector_states,
    drift_events,
    probe_answers,
    probe_facets,
    probes,
    request_payloads,
)

# Probes read per query while folding a long history.
CHUNK = 5000


def _first_content(choices: Any) -> Any:
    """The first choice's text of stored choices, as the database extracts it."""
    return choices[(0, "content")].as_string()


_COLUMNS = (
    probes.c.id, probes.c.uid, probes.c.started_at, probes.c.ok, probes.c.error_kind,
    probes.c.http_status, probes.c.total_ms,
    probes.c.time_to_first_token_ms, probes.c.openai_processing_ms,
    probes.c.ratelimit_remaining_requests, probes.c.ratelimit_remaining_tokens,
    probes.c.ratelimit_reset_requests_s, probes.c.ratelimit_reset_tokens_s,
    probes.c.ratelimit_remaining_input_tokens, probes.c.ratelimit_remaining_output_tokens,
    # The first choice's text, taken out by the database: parsing every probe's choices JSON
    # was a third of the time of folding a long history. (The text is always a string or
    # null: probe.completion stores nothing else.) An answer that repeats is in
    # probe_answers instead: its text by answer_id, as the facets below.
    _first_content(probes.c.choices), probes.c.answer_id, probes.c.prompt_tokens,
    # The facet's values (model, fingerprint, limits, finish reason) by its id, looked up in
    # what the reader learnt (a handful of rows a target): no join per probe.
    probes.c.facet_id, probes.c.request_payload_id,
)
# The facet values an Observation takes, in the order _learn keeps them.
_FACET = (probe_facets.c.model, probe_facets.c.system_fingerprint,
          probe_facets.c.ratelimit_limit_requests, probe_facets.c.ratelimit_limit_tokens,
          probe_facets.c.ratelimit_limit_input_tokens,
          probe_facets.c.ratelimit_limit_output_tokens, probe_facets.c.finish_reason)


# Built once: constructing a statement costs more than running it on a small table.
# Replays (`monitor replay`) are not the canary's schedule: drift is judged on probes alone.
_AFTER = (
    select(*_COLUMNS)
    .where(probes.c.target_id == bindparam("target_id"), probes.c.id > bindparam("after_id"),
           CANARY)
    .order_by(probes.c.id)
    .limit(bindparam("limit"))
)
# Whether a history is long: is there a probe past the first `count` (reads that many index
# entries, not the probes themselves).
_BEYOND = (
    select(probes.c.id)
    .where(probes.c.target_id == bindparam("target_id"), probes.c.id <= bindparam("until"),
           probes.c.replay_of.is_(None))
    .order_by(probes.c.id)
    .offset(bindparam("count"))
    .limit(1)
)
_POSITION = select(detector_states.c.thresholds_hash, detector_states.c.last_probe_id).where(
    detector_states.c.target_id == bindparam("target_id"))
# On PostgreSQL the lock also makes the transaction's commit asynchronous, in the same round
# trip (a SET LOCAL would be one more). Safe to lose in a crash: the probes are already stored
# durably, and a lost fold (state, events, alerts and outbox go together) is folded again.
_LOCK_POSITION = _POSITION.add_columns(
    func.set_config("synchronous_commit", "off", True)).with_for_update()
# PostgreSQL, the same lock and the probes after the locked position, in one round trip.
_NEWER = (
    select(*_COLUMNS, func.row_number().over(order_by=probes.c.id).label("nth"))
    .where(probes.c.target_id == detector_states.c.target_id,
           probes.c.id > detector_states.c.last_probe_id, CANARY)
    .order_by(probes.c.id)
    .limit(bindparam("limit"))
    .lateral("newer")
)
_LOCK_AND_READ = (
    select(detector_states.c.thresholds_hash, detector_states.c.last_probe_id,
           func.set_config("synchronous_commit", "off", True),
           # The packed state once, on the first row (a few KB; a long catch-up has thousands).
           case((func.coalesce(_NEWER.c.nth, 1) == 1, detector_states.c.state_zlib)),
           *[column for column in _NEWER.c if column.name != "nth"])
    .select_from(detector_states.outerjoin(_NEWER, true()))
    .where(detector_states.c.target_id == bindparam("target_id"))
    .order_by(_NEWER.c.id)
    .with_for_update(of=detector_states)
)
_STATE = select(detector_states.c.state_zlib).where(
    detector_states.c.target_id == bindparam("target_id"))
_SAVE = update(detector_states).where(detector_states.c.target_id == bindparam("target_id_"))


class Locked(NamedTuple):
    """What locking a target's detection state read (ObservationReader.locked_after)."""

    position: tuple[str, int] | None  # (thresholds hash, last folded probe id)
    packed: bytes | None
    newer: list[tuple[int, Observation]] | None


class ObservationReader:
    """Turns stored probes into Observations, or columns of them; remembers what it learnt of
    each payload, facet and repeated answer."""

    def __init__(self) -> None:
        # payload id -> (sha256, requested model, deterministic)
        self._payloads: dict[int, tuple[str, str | None, bool]] = {}
        # facet id -> its values, as _FACET lists them (a facet never changes)
        self._facets: dict[int, tuple[Any, ...]] = {}
        # answer id -> the first choice's text (an answer never changes either)
        self._answers: dict[int, str | None] = {}

    def after(self, connection: Connection, target_id: int, after_id: int, *,
              checks: bool = False, limit: int | None = None) -> list[tuple[int, Observation]]:
        """The target's probes stored after probe `after_id`, oldest first, with their ids:
        `limit` (CHUNK) of them at most. With `checks`, with their stored check outcomes (one
        more query, which targets without checks are spared)."""
        rows = self._read(connection, target_id, after_id, limit)
        outcomes = check_results.of_probes(connection, [row[0] for row in rows]) if checks else {}
        return [(row[0], self._observation(row, outcomes.get(row[0], ()))) for row in rows]

    def locked_after(self, connection: Connection, target_id: int, *, checks: bool = False
                     ) -> Locked:
        """lock_position() and, on PostgreSQL, the packed state and after() from there in the
        same round trip; None where they must be read apart (SQLite, no state row yet), and
        the probes None when the lock waited for another daemon's fold (PostgreSQL then
        returns the position it saved, with probes read from the one before)."""
        if connection.dialect.name != "postgresql":
            return Locked(lock_position(connection, target_id), None, None)
        rows = connection.execute(_LOCK_AND_READ, {"target_id": target_id,
                                                   "limit": CHUNK}).all()
        if not rows:
            return Locked(None, None, None)
        position = (rows[0][0], rows[0][1])
        packed = rows[0][3]
        read = [row[4:] for row in rows if row[4] is not None]
        if read and read[0][0] <= position[1]:
            return Locked(position, packed, None)
        self._learn(connection, read)
        outcomes = check_results.of_probes(connection, [row[0] for row in read]) if checks else {}
        return Locked(position, packed, [
            (row[0], self._observation(row, outcomes.get(row[0], ()))) for row in read])

    def columns_after(self, connection: Connection, target_id: int, after_id: int, *,
                      checks: bool = False, limit: int | None = None
                      ) -> tuple[list[int], Columns]:
        """The same probes as their ids and columns (what a bulk fold walks)."""
        rows = self._read(connection, target_id, after_id, limit)
        ids = [row[0] for row in rows]
        outcomes = check_results.of_probes(connection, ids) if checks else {}
        return ids, self._columns(rows, ids, outcomes)

    def all(self, connection: Connection, target_id: int, until: int | None = None, *,
            checks: bool = False, chunk: int | None = None) -> Iterator[tuple[int, Observation]]:
        """Every probe of the target (up to probe `until`), oldest first, read `chunk` (CHUNK)
        at a time."""
        size = chunk or CHUNK
        last = 0
        while read := self.after(connection, target_id, last, checks=checks, limit=size):
            for stored_id, observation in read:
                if until is not None and stored_id > until:
                    return
                yield stored_id, observation
            if len(read) < size:
                return
            last = read[-1][0]

    def all_columns(self, connection: Connection, target_id: int, until: int | None = None, *,
                    checks: bool = False, chunk: int | None = None
                    ) -> Iterator[tuple[list[int], Columns]]:
        """The same, a chunk of ids and columns at a time (never an empty one)."""
        size = chunk or CHUNK
        last = 0
        while True:
            ids, columns = self.columns_after(connection, target_id, last, checks=checks,
                                              limit=size)
            if until is not None and ids and ids[-1] > until:
                kept = bisect_right(ids, until)
                ids, columns = ids[:kept], columns.section(0, kept)
                if ids:
                    yield ids, columns
                return
            if ids:
                yield ids, columns
            if len(ids) < size:
                return
            last = ids[-1]

    def _read(self, connection: Connection, target_id: int, after_id: int,
              limit: int | None) -> Sequence[Any]:
        rows = connection.execute(
            _AFTER, {"target_id": target_id, "after_id": after_id,
                     "limit": limit or CHUNK}).all()
        self._learn(connection, rows)
        return rows

    def _learn(self, connection: Connection, rows: Sequence[Any]) -> None:
        """Read the payloads, facets and answers of `rows` not seen before."""
        facets = {row[-2] for row in rows} - self._facets.keys()
        if facets:
            for facet_id, *values in connection.execute(
                    select(probe_facets.c.id, *_FACET).where(probe_facets.c.id.in_(facets))):
                self._facets[facet_id] = tuple(values)
        answers = {row[-4] for row in rows} - self._answers.keys() - {None}
        if answers:
            for answer_id, text in connection.execute(
                    select(probe_answers.c.id, _first_content(probe_answers.c.choices))
                    .where(probe_answers.c.id.in_(answers))):
                self._answers[answer_id] = text
        missing = {row[-1] for row in rows} - self._payloads.keys()
        if not missing:
            return
        query = select(request_payloads.c.id, request_payloads.c.sha256, request_payloads.c.payload)
        for payload_id, digest, payload in connection.execute(
            query.where(request_payloads.c.id.in_(missing))
        ):
            model = payload.get("model")
            # The same request should get the same answer only when nothing is sampled.
            deterministic = payload.get("temperature") == 0 and payload.get("seed") is not None
            self._payloads[payload_id] = (digest, model if isinstance(model, str) else None,
                                          deterministic)

    def _observation(self, row: Any, checks: tuple[CheckResult, ...]) -> Observation:
        # By position: a Row's attributes are looked up by name, which adds up over a year.
        # (Columns.observation builds the same from columns; a single probe is read this way,
        # without columns, for live detection.)
        (_, uid, started_at, ok, error_kind, http_status, total_ms, ttft_ms, processing_ms,
         remaining_requests, remaining_tokens, reset_requests_s, reset_tokens_s,
         remaining_input_tokens, remaining_output_tokens, content, answer_id, prompt_tokens,
         facet_id, payload_id) = row
        if answer_id is not None:
            content = self._answers[answer_id]
        (model, system_fingerprint, limit_requests, limit_tokens, limit_input_tokens,
         limit_output_tokens, finish_reason) = self._facets[facet_id]
        digest, requested_model, deterministic = self._payloads[payload_id]
        return frozen(Observation, {
            "uid": uid,
            "started_at": started_at,
            "ok": ok,
            "error_kind": ErrorKind(error_kind) if error_kind else None,
            "http_status": http_status,
            "requested_model": requested_model,
            "model": model,
            "system_fingerprint": system_fingerprint,
            "total_ms": total_ms,
            "time_to_first_token_ms": ttft_ms,
            "openai_processing_ms": processing_ms,
            "rate_limits": frozen(RateLimits, {
                "limit_requests": limit_requests,
                "limit_tokens": limit_tokens,
                "remaining_requests": remaining_requests,
                "remaining_tokens": remaining_tokens,
                "reset_requests_s": reset_requests_s,
                "reset_tokens_s": reset_tokens_s,
                "limit_input_tokens": limit_input_tokens,
                "remaining_input_tokens": remaining_input_tokens,
                "reset_input_tokens_s": None,
                "limit_output_tokens": limit_output_tokens,
                "remaining_output_tokens": remaining_output_tokens,
                "reset_output_tokens_s": None,
            }),
            "content": content,
            "finish_reason": finish_reason,
            "prompt_tokens": prompt_tokens,
            "request_hash": digest,
            "deterministic": deterministic,
            "checks": checks,
        })

    def _columns(self, rows: Sequence[Any], ids: list[int],
                 outcomes: dict[int, tuple[CheckResult, ...]]) -> Columns:
        count = len(rows)
        if not count:
            return of_observations([])
        # Transposed in C; the columns are read by position (a Row's attributes are looked
        # up by name, which adds up over a year).
        (_, uid, started_at, ok, error_kind, http_status, total_ms, ttft_ms, processing_ms,
         remaining_requests, remaining_tokens, reset_requests_s, reset_tokens_s,
         remaining_input_tokens, remaining_output_tokens, inline, answer_ids, prompt_tokens,
         facet_ids, payload_ids) = zip(*rows, strict=True)
        answers = self._answers
        content = [text if answer_id is None else answers[answer_id]
                   for text, answer_id in zip(inline, answer_ids, strict=True)]
        # Each facet's values expanded into columns, also transposed in C.
        facets = self._facets
        (model, system_fingerprint, limit_requests, limit_tokens, limit_input_tokens,
         limit_output_tokens, finish_reason) = zip(
            *[facets[facet_id] for facet_id in facet_ids], strict=True)
        payloads = [self._payloads[payload_id] for payload_id in payload_ids]
        unsent = (None,) * count
        return Columns(
            uid=uid, started_at=started_at, ok=ok, error_kind=error_kind,
            http_status=http_status,
            requested_model=[requested for _, requested, _ in payloads],
            model=model, system_fingerprint=system_fingerprint, total_ms=total_ms,
            time_to_first_token_ms=ttft_ms, openai_processing_ms=processing_ms,
            limits={
                "limit_requests": limit_requests, "limit_tokens": limit_tokens,
                "remaining_requests": remaining_requests, "remaining_tokens": remaining_tokens,
                "reset_requests_s": reset_requests_s, "reset_tokens_s": reset_tokens_s,
                "limit_input_tokens": limit_input_tokens,
                "remaining_input_tokens": remaining_input_tokens,
                "reset_input_tokens_s": unsent,
                "limit_output_tokens": limit_output_tokens,
                "remaining_output_tokens": remaining_output_tokens,
                "reset_output_tokens_s": unsent,
            },
            content=content, finish_reason=finish_reason, prompt_tokens=prompt_tokens,
            request_hash=[digest for digest, _, _ in payloads],
            deterministic=[deterministic for _, _, deterministic in payloads],
            checks=[outcomes.get(stored_id, ()) for stored_id in ids] if outcomes
            else ((),) * count,
        )


def lock_position(connection: Connection, target_id: int) -> tuple[str, int] | None:
    """(thresholds hash, last folded probe id) of the target's saved detection state, locked
    until the transaction ends (PostgreSQL), so two daemons never fold the same probes at
    once; SQLite has one writer anyway. The state itself is read only when needed."""
    query = _LOCK_POSITION if connection.dialect.name == "postgresql" else _POSITION
    row = connection.execute(query, {"target_id": target_id}).first()
    return None if row is None else (row.thresholds_hash, row.last_probe_id)


def more_than(connection: Connection, target_id: int, count: int,
              until: int = 2**63 - 1) -> bool:
    """Whether folding the target's history (up to probe `until`) from scratch would read more
    than `count` probes."""
    return connection.execute(_BEYOND, {"target_id": target_id, "until": until,
                                        "count": count}).first() is not None


def position(connection: Connection, target_id: int) -> tuple[str, int] | None:
    """The same, unlocked: for readers that only look (`monitor status`)."""
    row = connection.execute(_POSITION, {"target_id": target_id}).first()
    return None if row is None else (row.thresholds_hash, row.last_probe_id)


def load_state(connection: Connection, target_id: int) -> bytes:
    """The target's saved detector state, packed (see `pack_state`)."""
    blob: bytes = connection.execute(_STATE, {"target_id": target_id}).scalar_one()
    return blob


@functools.lru_cache(maxsize=256)
def thresholds_hash(thresholds: DetectionThresholds) -> str:
    """What a saved state was made under: one made under other thresholds is not restored but
    replaced, by folding the stored history again."""
    text = json.dumps(asdict(thresholds), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def pack_state(state: dict[str, Any]) -> bytes:
    """A detector snapshot as stored: compressed JSON, a few KB for a target's full windows."""
    # Level 1: most of the ratio at a fraction of the time.
    return zlib.compress(json.dumps(state, separators=(",", ":")).encode(), 1)


def unpack_state(blob: bytes) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(zlib.decompress(blob)) if blob else {}
    return state


def claim_state(connection: Connection, target_id: int, now: datetime) -> None:
    """Make sure the target has a state row to lock (ON CONFLICT: daemons race here)."""
    connection.execute(
        upsert(connection.dialect, detector_states).values(
            target_id=target_id, thresholds_hash="", last_probe_id=0, state_zlib=b"",
            updated_at=now
        ).on_conflict_do_nothing(index_elements=["target_id"])
    )


def save_state(connection: Connection, target_id: int, thresholds_hash: str,
               last_probe_id: int, packed: bytes, now: datetime) -> None:
    """Store the target's detector state, packed by `pack_state`."""
    connection.execute(_SAVE, _saved(target_id, thresholds_hash, last_probe_id, packed, now))


def replace_state(connection: Connection, target_id: int, was: tuple[str, int],
                  thresholds_hash: str, last_probe_id: int, packed: bytes,
                  now: datetime) -> bool:
    """Save a state built without the lock, only if the target's position is still `was`
    (thresholds hash, last folded probe id); whether it was saved."""
    result = connection.execute(
        _SAVE.where(detector_states.c.thresholds_hash == bindparam("was_hash"),
                    detector_states.c.last_probe_id == bindparam("was_last")),
        {**_saved(target_id, thresholds_hash, last_probe_id, packed, now),
         "was_hash": was[0], "was_last": was[1]})
    return result.rowcount == 1


def _saved(target_id: int, thresholds_hash: str, last_probe_id: int, packed: bytes,
           now: datetime) -> dict[str, Any]:
    return {"target_id_": target_id, "thresholds_hash": thresholds_hash,
            "last_probe_id": last_probe_id, "state_zlib": packed, "updated_at": now}


def record_events(connection: Connection, target_id: int, probe_uid: str,
                  events: Sequence[DriftEvent]) -> None:
    """Store the events one probe produced; ones already stored (a re-fold) are kept as they
    were."""
    if not events:
        return
    connection.execute(
        upsert(connection.dialect, drift_events).on_conflict_do_nothing(
            index_elements=["probe_uid", "kind", "key", "opened"]),
        [
            {"target_id": target_id, "kind": e.kind.value, "key": e.key, "opened": e.opened,
             "severity": e.severity.value, "at": e.at, "probe_uid": probe_uid,
             "before": e.before, "after": e.after, "probe_uids": list(e.probe_uids),
             "explanation": e.explanation}
            for e in events
        ],
    )
