"""Rows that many probes share, each stored once and found again by its key: the get-or-create
every writer uses (targets, configurations, payloads), and the ids of a probe's facet and of
its answer when that repeats (probe_facets, probe_answers: revision 0014).

Writers cache the ids they find; an id cached inside a transaction that then failed names a
row that was rolled back, so each cache here has forget(), which the writer calls then.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, select

from monitor.store.db import upsert
from monitor.store.schema import FACET_FIELDS, probe_answers, probe_facets


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def facet_digest(values: Sequence[Any]) -> str:
    """The probe_facets key of a facet's values (in FACET_FIELDS order). Revision 0014
    computes the same for the rows it moves."""
    return hashlib.sha256(canonical_json(list(values)).encode()).hexdigest()


class FacetIds:
    """The ids of probe_facets rows by their values, created on first use and remembered, so
    the probes of a target cost no query for their facet once it is known. Like any id
    cached inside a transaction, forget() them all when that transaction fails."""

    def __init__(self) -> None:
        # By the values themselves: text and integers (or None), which the tuple tells
        # apart as exactly as the digest does.
        self._ids: dict[tuple[Any, ...], int] = {}

    def take(self, connection: Any, row: dict[str, Any]) -> None:
        """Replace a probe row's facet values (as _probe_values built it) by its facet_id."""
        values = tuple([row.pop(name) for name in FACET_FIELDS])
        found = self._ids.get(values)
        if found is None:
            found = self._ids[values] = get_or_create(
                connection, probe_facets, {"sha256": facet_digest(values)},
                dict(zip(FACET_FIELDS, values, strict=True)))
        row["facet_id"] = found

    def __bool__(self) -> bool:
        return bool(self._ids)

    def forget(self) -> None:
        self._ids.clear()


class AnswerIds:
    """Moves a probe row's answer (its choices) to probe_answers once the answer repeats: an
    answer seen among the target's last RECENT ones is stored there (once, by digest) and
    referenced; any other stays on the probe. A canary's second probe onwards costs an id
    where the answer's JSON was; answers that never repeat (recorded traffic) cost nothing
    more than before. Ids are cached like FacetIds' (forget() after a failed transaction)."""

    RECENT = 8

    def __init__(self) -> None:
        # By repr(), which tells JSON values apart as exactly as the canonical text does
        # (as Recorder's payload cache).
        self._ids: dict[str, int] = {}
        # target id -> the answers last stored on its probes, oldest first.
        self._recent: dict[int, dict[str, None]] = {}

    def take(self, connection: Any, row: dict[str, Any]) -> None:
        """Replace a probe row's choices by an answer_id when the answer repeats."""
        choices = row["choices"]
        row["answer_id"] = None
        if choices is None:
            return
        seen = repr(choices)
        found = self._ids.get(seen)
        if found is None:
            recent = self._recent.setdefault(row["target_id"], {})
            if seen not in recent:
                recent[seen] = None
                if len(recent) > self.RECENT:
                    del recent[next(iter(recent))]
                return
            found = self._ids[seen] = get_or_create(
                connection, probe_answers, {"sha256": answer_digest(choices)},
                {"choices": choices})
        row["choices"], row["answer_id"] = None, found

    def __bool__(self) -> bool:
        return bool(self._ids)

    def forget(self) -> None:
        # The recent answers are only a guess at what repeats: kept.
        self._ids.clear()


def answer_digest(choices: Any) -> str:
    """The probe_answers key of stored choices. Revision 0014 computes the same."""
    return hashlib.sha256(canonical_json(choices).encode()).hexdigest()


def get_or_create(
    connection: Any, table: Table, key: dict[str, Any], values: dict[str, Any]
) -> int:
    """The id of the row with `key`, inserting it if missing. ON CONFLICT DO NOTHING makes two
    daemons registering the same target at once both succeed, with one row."""
    where = [table.c[column] == value for column, value in key.items()]
    found = connection.execute(select(table.c.id).where(*where)).scalar()
    if found is None:
        connection.execute(
            upsert(connection.dialect, table).values(**key, **values).on_conflict_do_nothing(
                index_elements=list(key)
            )
        )
        found = connection.execute(select(table.c.id).where(*where)).scalar_one()
    return int(found)
