"""Stored probes read back without sending anything (`monitor logs`, `monitor show`, the
/probes/{id} page): a list newest first, and one probe in full with its neighbours and what
changed since the probe it is compared with.

Records are the JSON-ready dicts `probe_records` builds (every column, the redacted
headers, the request payload, the raw body). A replay is listed like any probe, with its
`replay_of`; it is compared with the probe it re-sent, a canary with the target's previous
canary, so that a replay never stands in for the history it was sent beside.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, select

from monitor.store import blobs
from monitor.store.schema import (
    PROBE_FIELDS,
    PROBES_WITH_ANSWERS,
    probes,
    request_payloads,
    targets,
)

# The fields `show` compares between a probe and the one before it, in the order it lists them.
COMPARED = ("ok", "http_status", "error_kind", "model", "system_fingerprint", "service_tier",
            "finish_reason")


def list_probes(engine: Engine, *, limit: int, target: str | None = None,
                since: datetime | None = None, failed: bool = False) -> list[dict[str, Any]]:
    """The newest `limit` stored probes (by id: the order they were stored), newest first,
    as full records."""
    query = select(probes.c.id).order_by(probes.c.id.desc()).limit(limit)
    if target is not None:
        query = query.join(targets, targets.c.id == probes.c.target_id).where(
            targets.c.name == target)
    if since is not None:
        query = query.where(probes.c.started_at >= since)
    if failed:
        query = query.where(probes.c.ok.is_(False))
    with engine.connect() as connection:
        ids = list(connection.execute(query).scalars())
    return probe_records(engine, ids)


def probe_detail(engine: Engine, probe_id: int) -> dict[str, Any] | None:
    """One probe in full, or None if there is no such probe: its record, the ids of the
    target's previous and next probes, and `changes` from the probe it is compared with
    (None when there is none)."""
    with engine.connect() as connection:
        row = connection.execute(
            select(probes.c.target_id, probes.c.replay_of).where(probes.c.id == probe_id)
        ).first()
        if row is None:
            return None
        target_id, replay_of = row
        same_target = probes.c.target_id == target_id
        # Both walk ix_probes_target_id_id from the probe, one step each way.
        previous_id = connection.execute(
            select(probes.c.id).where(same_target, probes.c.id < probe_id)
            .order_by(probes.c.id.desc()).limit(1)).scalar()
        next_id = connection.execute(
            select(probes.c.id).where(same_target, probes.c.id > probe_id)
            .order_by(probes.c.id).limit(1)).scalar()
        base_id = replay_of if replay_of is not None else connection.execute(
            select(probes.c.id).where(same_target, probes.c.id < probe_id,
                                      probes.c.replay_of.is_(None))
            .order_by(probes.c.id.desc()).limit(1)).scalar()
    found = probe_records(engine, [probe_id] + ([base_id] if base_id is not None else []))
    if not found:
        return None  # deleted in between
    record = found[0]
    base = found[1] if len(found) > 1 else None
    return {"probe": record, "previous_id": previous_id, "next_id": next_id,
            "changes": None if base is None else compare(base, record)}


def _answer(record: dict[str, Any]) -> str | None:
    """The first choice's content (or refusal), None when the probe got no answer."""
    choices = record.get("choices") or []
    if not choices:
        return None
    first = choices[0]
    text = first.get("content")
    found = text if text is not None else first.get("refusal")
    return None if found is None else str(found)


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What changed from `before` to `after` (two records): the compared fields that differ,
    the response headers that changed, appeared or went, and whether the answer changed."""
    headers_before = before.get("response_headers") or {}
    headers_after = after.get("response_headers") or {}
    answer_before, answer_after = _answer(before), _answer(after)
    return {
        "base_id": before["id"],
        "base_is_original": after.get("replay_of") == before["id"],
        "base_started_at": before["started_at"],
        "fields": [{"field": name, "before": before.get(name), "after": after.get(name)}
                   for name in COMPARED if before.get(name) != after.get(name)],
        "headers_changed": [
            {"name": name, "before": headers_before[name], "after": headers_after[name]}
            for name in sorted(set(headers_before) & set(headers_after))
            if headers_before[name] != headers_after[name]],
        "headers_added": {name: headers_after[name]
                          for name in sorted(set(headers_after) - set(headers_before))},
        "headers_removed": {name: headers_before[name]
                            for name in sorted(set(headers_before) - set(headers_after))},
        "answer_changed": answer_before != answer_after,
        "answer_before": answer_before,
    }


def probe_records(engine: Engine, ids: Sequence[int]) -> list[dict[str, Any]]:
    """Stored probes as JSON-ready dicts: every column, the target name, the request payload and
    the raw body (text when it is UTF-8, else base64), in the order of `ids`."""
    if not ids:
        return []
    query = (
        select(*PROBE_FIELDS, targets.c.name.label("target_name"),
               request_payloads.c.payload.label("request_payload"))
        .select_from(PROBES_WITH_ANSWERS)
        .join(targets, targets.c.id == probes.c.target_id)
        .join(request_payloads, request_payloads.c.id == probes.c.request_payload_id)
        .where(probes.c.id.in_(ids))
    )
    dictionaries = blobs.Dictionaries()
    with engine.connect() as connection:
        found = {row.id: row for row in connection.execute(query)}
        return [_record(connection, dictionaries, found[i]) for i in ids if i in found]


def _record(connection: Connection, dictionaries: blobs.Dictionaries,
            probe: Row[Any, *tuple[Any, ...]]) -> dict[str, Any]:
    record: dict[str, Any] = {"id": probe.id, "target": probe.target_name}
    for column in PROBE_FIELDS:
        if column.key in ("id", "raw_response_zlib", "response_headers_zlib"):
            continue
        value = getattr(probe, column.key)
        record[column.key] = value.isoformat() if isinstance(value, datetime) else value
    record["response_headers"] = blobs.headers(connection, probe, dictionaries)
    record["request_payload"] = probe.request_payload
    body = blobs.body(connection, probe, dictionaries)
    try:
        record["raw_response"] = body.decode("utf-8")
    except UnicodeDecodeError:
        record["raw_response_base64"] = base64.b64encode(body).decode("ascii")
    return record
