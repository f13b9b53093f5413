"""Claims on scheduled slots, skipped slots, and instance heartbeats.

Each (target, slot time) row can be inserted once: the instance whose INSERT lands owns the
slot; every other instance sees a conflict and leaves it. That is all the coordination several
daemons on one PostgreSQL need, and it needs no lease to expire: a slot whose owner died is
simply lost, and the next slot is claimed afresh by whoever is alive.

A slot is recorded as skipped when its time comes, never ahead. After a 429 the instance that
got it reserves the slots inside the backoff, so that no instance (nor a restart of this one)
probes them; each reserved slot becomes skipped when some instance's schedule reaches it, and
one that no instance reached (none was running) stays reserved and is never counted.
"""

from __future__ import annotations

import enum
import os
import socket
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    Table,
    bindparam,
    delete,
    func,
    literal_column,
    select,
    update,
)

from monitor.domain import SkipKind, SlotState
from monitor.store.db import upsert
from monitor.store.schema import instances, targets
from monitor.store.schema import slots as slot_rows  # `slots` names the times in this module


def _insert(engine: Engine, table: Table) -> Any:
    return upsert(engine.dialect, table)


# The literal, not a bound parameter: only then may SQLite and PostgreSQL's generic plans use
# the partial index of skipped slots (their WHERE must match the index's).
_IS_SKIPPED = slot_rows.c.state == literal_column("'skipped'")


class Claim(enum.Enum):
    """What `claim` got."""

    OURS = "ours"  # this instance probes the slot
    RESERVED = "reserved"  # a backoff had reserved it: this instance recorded it as skipped
    TAKEN = "taken"  # another instance has it


def claim(engine: Engine, target_id: int, slot_at: datetime, instance_id: str) -> Claim:
    """Take the slot whose time has come. A slot reserved by any instance's backoff is
    recorded as skipped by this one, the one whose schedule reached it."""
    # RETURNING, not rowcount: psycopg 3 reports -1 for an INSERT ... ON CONFLICT here.
    with engine.begin() as connection:
        state = connection.execute(_claim_statement(engine.dialect), {
            "target_id": target_id, "slot_at": slot_at, "instance_id": instance_id,
            "state": SlotState.CLAIMED.value}).scalar()
    if state is None:
        return Claim.TAKEN
    return Claim.OURS if state == SlotState.CLAIMED.value else Claim.RESERVED


# Built once per dialect name: building the claim (its `excluded` columns above all) cost
# more CPU than running it, and it runs once per probe.
_CLAIMS: dict[str, Any] = {}


def _claim_statement(dialect: Dialect) -> Any:
    statement = _CLAIMS.get(dialect.name)
    if statement is None:
        insert = upsert(dialect, slot_rows)
        statement = _CLAIMS[dialect.name] = insert.on_conflict_do_update(
            index_elements=["target_id", "slot_at"],
            set_={"state": SlotState.SKIPPED.value, "instance_id": insert.excluded.instance_id},
            where=slot_rows.c.state == SlotState.RESERVED.value,
        ).returning(slot_rows.c.state)
    return statement


def skip(engine: Engine, target_id: int, slots: Iterable[datetime], instance_id: str,
         kind: SkipKind, reason: str) -> int:
    """Record slots whose time has come as skipped (a reservation of theirs included);
    returns how many were this instance's to record (not claimed by another one first)."""
    rows = [{"target_id": target_id, "slot_at": s, "instance_id": instance_id,
             "state": SlotState.SKIPPED.value, "reason_kind": kind.value, "reason": reason}
            for s in slots]
    if not rows:
        return 0
    statement = _insert(engine, slot_rows)
    statement = statement.on_conflict_do_update(
        index_elements=["target_id", "slot_at"],
        set_={"state": statement.excluded.state, "instance_id": statement.excluded.instance_id,
              "reason_kind": statement.excluded.reason_kind,
              "reason": statement.excluded.reason},
        where=slot_rows.c.state == SlotState.RESERVED.value,
    ).returning(slot_rows.c.id)
    with engine.begin() as connection:
        return len(connection.execute(statement, rows).all())


def reserve(engine: Engine, target_id: int, slots: Iterable[datetime], instance_id: str,
            reason: str) -> int:
    """Keep future slots inside a 429 backoff from every instance (none probes them). They
    count as skipped only once their time comes (`claim`, `skip`): a daemon stopped in the
    middle of a backoff has skipped only the slots it lived through."""
    rows = [{"target_id": target_id, "slot_at": s, "instance_id": instance_id,
             "state": SlotState.RESERVED.value, "reason_kind": SkipKind.RATE_LIMITED.value,
             "reason": reason} for s in slots]
    if not rows:
        return 0
    statement = _insert(engine, slot_rows).on_conflict_do_nothing(
        index_elements=["target_id", "slot_at"]).returning(slot_rows.c.id)
    with engine.begin() as connection:
        return len(connection.execute(statement, rows).all())


def skipped_counts(connection: Connection, since: datetime | None = None,
                   until: datetime | None = None,
                   target_ids: Sequence[int] | None = None) -> dict[int, dict[str, int]]:
    """Skipped slots per target id and SkipKind, of the slots in [since, until) (all by
    default); reserved slots whose time has not come are not counted."""
    query = select(slot_rows.c.target_id, slot_rows.c.reason_kind,
                   func.count().label("skipped")).where(_IS_SKIPPED)
    if since is not None:
        query = query.where(slot_rows.c.slot_at >= since)
    if until is not None:
        query = query.where(slot_rows.c.slot_at < until)
    if target_ids is not None:
        query = query.where(slot_rows.c.target_id.in_(target_ids))
    counts: dict[int, dict[str, int]] = {}
    # Every skipped row has a kind (0008 gave the older ones theirs).
    for row in connection.execute(query.group_by(slot_rows.c.target_id, slot_rows.c.reason_kind)):
        counts.setdefault(row.target_id, {})[row.reason_kind] = row.skipped
    return counts


def skipped_by_target(engine: Engine, since: datetime) -> dict[str, dict[str, int]]:
    """Skipped slots since `since` per target name and SkipKind (`monitor status`)."""
    with engine.connect() as connection:
        counts = skipped_counts(connection, since)
        names = dict(connection.execute(
            select(targets.c.id, targets.c.name).where(targets.c.id.in_(counts))).all())
    return {names[i]: dict(sorted(kinds.items()))
            for i, kinds in sorted(counts.items(), key=lambda item: names[item[0]])}


# Built once, like the claim: it runs once per probe.
_SETTLE = (update(slot_rows)
           .where(slot_rows.c.target_id == bindparam("target_id_"),
                  slot_rows.c.slot_at == bindparam("slot_at_"))
           .values(state=SlotState.PROBED.value, probe_uid=bindparam("probe_uid")))


def settle(engine: Engine, target_id: int, slot_at: datetime, probe_uid: str) -> None:
    """Mark a claimed slot as probed by the probe `probe_uid`."""
    with engine.begin() as connection:
        settle_in(connection, [(target_id, slot_at, probe_uid)])


def settle_in(connection: Connection, settled: Sequence[tuple[int, datetime, str]]) -> None:
    """`settle` (target id, slot, probe uid) each, inside the caller's transaction: the
    daemon's group commit settles the slots of the probes it stores, saving each probe a
    transaction of its own."""
    if settled:
        connection.execute(_SETTLE, [{"target_id_": target_id, "slot_at_": slot_at,
                                      "probe_uid": uid} for target_id, slot_at, uid in settled])


def new_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def heartbeat(engine: Engine, instance_id: str, now: datetime) -> None:
    host, pid, _ = instance_id.split(":")
    statement = _insert(engine, instances).values(
        id=instance_id, hostname=host, pid=int(pid), started_at=now, heartbeat_at=now,
    ).on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": now})
    with engine.begin() as connection:
        connection.execute(statement)


def retire(engine: Engine, instance_id: str) -> None:
    with engine.begin() as connection:
        connection.execute(delete(instances).where(instances.c.id == instance_id))


def alive(engine: Engine, now: datetime, within: timedelta) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(instances).where(instances.c.heartbeat_at >= now - within)
            .order_by(instances.c.started_at)
        ).all()
    return [{"id": r.id, "hostname": r.hostname, "pid": r.pid,
             "started_at": r.started_at.isoformat(), "heartbeat_at": r.heartbeat_at.isoformat()}
            for r in rows]


