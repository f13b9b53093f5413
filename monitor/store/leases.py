"""Claims on scheduled slots, and instance heartbeats.

Each (target, slot time) row can be inserted once: the instance whose INSERT lands owns the
slot; every other instance sees a conflict and leaves it. That is all the coordination several
daemons on one PostgreSQL need, and it needs no lease to expire: a slot whose owner died is
simply lost, and the next slot is claimed afresh by whoever is alive.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from monitor.domain import SlotState
from monitor.store.models import InstanceRow, SlotRow


def _insert(engine: Engine, table: Any) -> Any:
    return (pg_insert if engine.dialect.name == "postgresql" else sqlite_insert)(table)


def claim(engine: Engine, target_id: int, slot_at: datetime, instance_id: str,
          state: SlotState = SlotState.CLAIMED, reason: str | None = None) -> bool:
    """True if this instance now owns the slot (as claimed, or as skipped with a reason)."""
    statement = _insert(engine, SlotRow).values(
        target_id=target_id, slot_at=slot_at, instance_id=instance_id, state=state.value,
        reason=reason,
    ).on_conflict_do_nothing(index_elements=["target_id", "slot_at"]).returning(SlotRow.id)
    # RETURNING, not rowcount: psycopg 3 reports -1 for an INSERT ... ON CONFLICT here.
    with engine.begin() as connection:
        return connection.execute(statement).first() is not None


def skip_many(engine: Engine, target_id: int, slots: Iterable[datetime], instance_id: str,
              reason: str) -> int:
    """Claim future slots as skipped (after a 429), so no other instance probes them either."""
    rows = [{"target_id": target_id, "slot_at": s, "instance_id": instance_id,
                 "state": SlotState.SKIPPED.value, "reason": reason} for s in slots]
    if not rows:
        return 0
    statement = _insert(engine, SlotRow).on_conflict_do_nothing(
        index_elements=["target_id", "slot_at"]).returning(SlotRow.id)
    with engine.begin() as connection:
        return len(connection.execute(statement, rows).all())


def settle(engine: Engine, target_id: int, slot_at: datetime, probe_uid: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(SlotRow)
            .where(SlotRow.target_id == target_id, SlotRow.slot_at == slot_at)
            .values(state=SlotState.PROBED.value, probe_uid=probe_uid)
        )


def new_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def heartbeat(engine: Engine, instance_id: str, now: datetime) -> None:
    host, pid, _ = instance_id.split(":")
    statement = _insert(engine, InstanceRow).values(
        id=instance_id, hostname=host, pid=int(pid), started_at=now, heartbeat_at=now,
    ).on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": now})
    with engine.begin() as connection:
        connection.execute(statement)


def retire(engine: Engine, instance_id: str) -> None:
    with engine.begin() as connection:
        connection.execute(delete(InstanceRow).where(InstanceRow.id == instance_id))


def alive(engine: Engine, now: datetime, within: timedelta) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(InstanceRow).where(InstanceRow.heartbeat_at >= now - within)
            .order_by(InstanceRow.started_at)
        ).all()
    return [{"id": r.id, "hostname": r.hostname, "pid": r.pid,
             "started_at": r.started_at.isoformat(), "heartbeat_at": r.heartbeat_at.isoformat()}
            for r in rows]


