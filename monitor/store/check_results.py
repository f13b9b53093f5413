"""Check outcomes: written with the canary probes they judge, counted for reports and /metrics,
and read back with the probes for detection.

Rows carry the probe's target, time, model and fingerprint, so every count here is one range
scan of (target_id, started_at) with no join to the probes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from monitor.domain import CheckOutcome, CheckResult, ProbeResult
from monitor.store.db import upsert
from monitor.store.schema import CHOICES, check_results, probe_answers, probes


def insert(connection: Connection, stored: Sequence[tuple[ProbeResult, int, int]]) -> None:
    """The outcomes of probes just stored, given as (result, probe id, target id); outcomes
    already stored (a spool batch handed over twice) are kept."""
    rows = [
        {"probe_id": probe_id, "check_name": check.check, "target_id": target_id,
         "started_at": result.started_at, "outcome": check.outcome.value,
         "reason": check.reason, "model": result.model,
         "system_fingerprint": result.system_fingerprint}
        for result, probe_id, target_id in stored for check in result.checks
    ]
    insert_rows(connection, rows)


def insert_rows(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """check_results rows as they are (`monitor import`), keeping outcomes already stored."""
    if not rows:
        return
    connection.execute(upsert(connection.dialect, check_results).on_conflict_do_nothing(
        index_elements=["probe_id", "check_name"]), rows)


def insert_by_uid(connection: Connection, stored: Sequence[tuple[ProbeResult, int]]) -> None:
    """The same for (result, target id), the probes' ids looked up by uid."""
    checked = [(result, target_id) for result, target_id in stored if result.checks]
    if not checked:
        return
    ids = dict(connection.execute(select(probes.c.uid, probes.c.id).where(
        probes.c.uid.in_([result.uid for result, _ in checked]))).all())
    insert(connection, [(result, ids[result.uid], target_id) for result, target_id in checked])


def of_probes(connection: Connection, probe_ids: Iterable[int]
              ) -> dict[int, tuple[CheckResult, ...]]:
    """The stored outcomes of these probes, by probe id (a probe without checks is absent)."""
    found: dict[int, list[CheckResult]] = {}
    wanted = list(probe_ids)
    if not wanted:
        return {}
    query = (select(check_results.c.probe_id, check_results.c.check_name, check_results.c.outcome,
                    check_results.c.reason)
             .where(check_results.c.probe_id.in_(wanted))
             .order_by(check_results.c.probe_id, check_results.c.check_name))
    for probe_id, name, outcome, reason in connection.execute(query):
        found.setdefault(probe_id, []).append(CheckResult(name, CheckOutcome(outcome), reason))
    return {probe_id: tuple(results) for probe_id, results in found.items()}


def answers(connection: Connection, probe_ids: Sequence[int]
            ) -> dict[int, tuple[int | None, list[dict[str, Any]] | None]]:
    """(completion tokens, stored choices) of these probes: what checks read beyond an
    Observation, for judging stored answers again (`monitor detect`)."""
    query = (select(probes.c.id, probes.c.completion_tokens, CHOICES)
             .select_from(probes.outerjoin(probe_answers,
                                           probe_answers.c.id == probes.c.answer_id))
             .where(probes.c.id.in_(probe_ids)))
    return {probe_id: (tokens, choices) for probe_id, tokens, choices in connection.execute(query)}


@dataclass(frozen=True)
class PassCount:
    """How one check fared on one target's answers from one backend, over a range."""

    target_id: int
    check: str
    model: str | None
    system_fingerprint: str | None
    outcome: CheckOutcome
    probes: int


def counts(connection: Connection, target_ids: Sequence[int], since: datetime | None = None,
           until: datetime | None = None) -> list[PassCount]:
    """Outcomes counted per target, check, model, fingerprint and outcome."""
    row = check_results.c
    query = (select(row.target_id, row.check_name, row.model, row.system_fingerprint,
                    row.outcome, func.count())
             .where(row.target_id.in_(target_ids))
             .group_by(row.target_id, row.check_name, row.model, row.system_fingerprint,
                       row.outcome))
    if since is not None:
        query = query.where(row.started_at >= since)
    if until is not None:
        query = query.where(row.started_at < until)
    return [PassCount(target_id, check, model, fingerprint, CheckOutcome(outcome), probes)
            for target_id, check, model, fingerprint, outcome, probes in connection.execute(query)]
