"""Move probes between databases as JSON Lines (`monitor export`, `monitor import`).

The file holds a header line, then the probes in id order. Before a probe's line come the
target, configuration and request payload it refers to, each written once, before its first
use:

    {"kind": "monitor-export", "version": 1, "schema": "0010", "exported_at": "..."}
    {"kind": "target", "name": "canary", "created_at": "..."}
    {"kind": "config", "target": "canary", "config_hash": "...", "config": {...}, "first_seen_at": "..."}
    {"kind": "payload", "sha256": "...", "payload": {...}}
    {"kind": "probe", "target": "canary", "config_hash": "...", "request_sha256": "...",
     "replay_of_uid": null, "uid": "...", ...every other column...,
     "response_headers": {...}, "raw_response": "...",      (or "raw_response_base64")
     "checks": [{"check": "content_equals", "outcome": "fail", "reason": "..."}, ...]}

"schema" is the exporting monitor's migration head. A probe's "checks" are its check_results
rows, in check name order (their target, time, model and fingerprint are the probe's own); a
file exported before checks were has none, and its probes import without outcomes.

Row ids are not exported. References go by target name, config hash, payload sha256 and probe
uid, so a file imports into any database. Import is idempotent by probe uid: a probe already
there is skipped, untouched, checks and all. Export then import reproduces every column and
every check outcome. The compressed body and headers are re-encoded from the exported bytes, and
decode to the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy import Connection, Engine, Table, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import aliased

from monitor.domain import CheckOutcome, CheckResult
from monitor.errors import MonitorError
from monitor.store import blobs, check_results
from monitor.store.db import head_revision
from monitor.store.models import (
    PROBE_FIELDS,
    ProbeAnswerRow,
    ProbeFacetRow,
    ProbeRow,
    RequestPayloadRow,
    TargetConfigRow,
    TargetKind,
    TargetRow,
    UtcDateTime,
)
from monitor.store.shared import AnswerIds, FacetIds, canonical_json, get_or_create

FORMAT = "monitor-export"
VERSION = 1
# Probes inserted per transaction on import: large enough to amortise the commit.
BATCH = 1000
# Ids and the compressed blobs are not exported as they are; the rest is, column for column,
# the facet's values among them as if they were the probe's (as they were before 0014).
_NOT_EXPORTED = {"id", "target_id", "target_config_id", "request_payload_id", "replay_of",
                 "response_headers_zlib", "raw_response_zlib"}
_PROBES: Table = ProbeRow.__table__
_COLUMNS = [c for c in PROBE_FIELDS if c.key not in _NOT_EXPORTED]
_TIMES = {c.key for c in _COLUMNS if isinstance(c.type, UtcDateTime)}
_REQUIRED = {c.key for c in _COLUMNS if not getattr(c, "nullable", True)}
_UID = re.compile("[0-9a-f]{32}")  # a uuid4's hex, as probes get them (stored as 16 bytes)
_REFERENCES = {"kind", "target", "config_hash", "request_sha256", "replay_of_uid",
               "response_headers", "raw_response", "raw_response_base64", "checks"}


class TransferError(MonitorError):
    """An import file that cannot be read as a monitor export; names the file and line."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")


@dataclass(frozen=True)
class ImportSummary:
    probes: int  # probe lines read
    inserted: int
    skipped: int  # already in the database (same uid)
    unlinked: int  # replays whose original is neither in the file nor in the database


def _line(record: dict[str, Any]) -> str:
    # ASCII-only: the file may be shown on a terminal, and model text is untrusted.
    return json.dumps(record, separators=(",", ":")) + "\n"


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def export(engine: Engine, out: IO[str], target: str | None = None,
           since: datetime | None = None, until: datetime | None = None) -> int:
    """Write the selected probes (by target name, started_at in [since, until)) with what they
    refer to; returns how many probes were written."""
    original = aliased(ProbeRow)
    query = (
        select(*_COLUMNS, ProbeRow.id.label("probe_id"), ProbeRow.response_headers_zlib, ProbeRow.raw_response_zlib,
               ProbeRow.target_config_id, ProbeRow.request_payload_id,
               TargetRow.name.label("target_name"), TargetRow.created_at.label("target_created_at"),
               TargetRow.kind.label("target_kind"),
               RequestPayloadRow.sha256.label("request_sha256"),
               original.uid.label("replay_of_uid"))
        .join(TargetRow, TargetRow.id == ProbeRow.target_id)
        .join(ProbeFacetRow, ProbeFacetRow.id == ProbeRow.facet_id)
        .outerjoin(ProbeAnswerRow, ProbeAnswerRow.id == ProbeRow.answer_id)
        .join(RequestPayloadRow, RequestPayloadRow.id == ProbeRow.request_payload_id)
        .outerjoin(original, original.id == ProbeRow.replay_of)
        .order_by(ProbeRow.id)
    )
    if target is not None:
        query = query.where(TargetRow.name == target)
    if since is not None:
        query = query.where(ProbeRow.started_at >= since)
    if until is not None:
        query = query.where(ProbeRow.started_at < until)
    out.write(_line({"kind": FORMAT, "version": VERSION, "schema": head_revision(),
                     "exported_at": datetime.now(UTC).isoformat()}))
    targets: set[str] = set()
    configs: dict[int, str] = {}  # config id -> hash
    payloads: set[int] = set()
    written = 0
    dictionaries = blobs.Dictionaries()
    with engine.connect() as connection:
        rows = connection.execution_options(yield_per=BATCH).execute(query)
        for batch in rows.partitions():
            # One query per batch for the checks, not one per probe.
            checks = check_results.of_probes(connection, [row.probe_id for row in batch])
            for row in batch:
                _write_references(connection, out, row, targets, configs, payloads)
                out.write(_line(_probe_record(
                    row, configs[row.target_config_id], checks.get(row.probe_id, ()),
                    blobs.headers(connection, row, dictionaries),
                    blobs.body(connection, row, dictionaries))))
                written += 1
    return written


def _write_references(connection: Connection, out: IO[str], row: Any, targets: set[str],
                      configs: dict[int, str], payloads: set[int]) -> None:
    """The target, configuration and payload of `row` not yet written (noted in the sets)."""
    if row.target_name not in targets:
        targets.add(row.target_name)
        out.write(_line({"kind": "target", "name": row.target_name,
                         "created_at": _time(row.target_created_at),
                         "target_kind": row.target_kind}))
    if row.target_config_id not in configs:
        configs[row.target_config_id] = _write_config(
            connection, out, row.target_name, row.target_config_id)
    if row.request_payload_id not in payloads:
        payloads.add(row.request_payload_id)
        payload = connection.execute(select(RequestPayloadRow.payload).where(
            RequestPayloadRow.id == row.request_payload_id)).scalar_one()
        out.write(_line({"kind": "payload", "sha256": row.request_sha256,
                         "payload": payload}))


def _write_config(connection: Connection, out: IO[str], target: str, config_id: int) -> str:
    config = connection.execute(
        select(TargetConfigRow.config_hash, TargetConfigRow.config, TargetConfigRow.first_seen_at)
        .where(TargetConfigRow.id == config_id)).one()
    out.write(_line({"kind": "config", "target": target, "config_hash": config.config_hash,
                     "config": config.config, "first_seen_at": _time(config.first_seen_at)}))
    return str(config.config_hash)


def _probe_record(row: Any, config_hash: str, checks: Iterable[CheckResult],
                  headers: dict[str, str], body: bytes) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": "probe", "target": row.target_name,
                              "config_hash": config_hash, "request_sha256": row.request_sha256,
                              "replay_of_uid": row.replay_of_uid}
    for column in _COLUMNS:
        value = getattr(row, column.key)
        record[column.key] = _time(value) if column.key in _TIMES else value
    record["response_headers"] = headers
    try:
        record["raw_response"] = body.decode("utf-8")
    except UnicodeDecodeError:
        record["raw_response_base64"] = base64.b64encode(body).decode("ascii")
    record["checks"] = [{"check": c.check, "outcome": c.outcome.value, "reason": c.reason}
                        for c in checks]
    return record


def import_lines(engine: Engine, lines: Iterable[str], source: str) -> ImportSummary:
    """Store the probes of an export (`source` names it in errors), skipping uids already
    stored. Each batch of probes is one transaction; importing the same file again after a
    failure carries on where it stopped."""
    importer = _Importer(source)
    with engine.connect() as connection:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError:
                raise TransferError(source, number, "not a JSON object") from None
            if not isinstance(record, dict):
                raise TransferError(source, number, "not a JSON object")
            importer.take(connection, record, number)
            if len(importer.rows) >= BATCH:
                importer.flush(connection)
                connection.commit()
        importer.flush(connection)
        connection.commit()
    if not importer.header_seen:
        raise TransferError(source, 1, f"empty: expected a {FORMAT} header line")
    return ImportSummary(importer.probes, importer.inserted, importer.probes - importer.inserted,
                         importer.unlinked)


class _Importer:
    def __init__(self, source: str) -> None:
        self.source = source
        self.header_seen = False
        self.targets: dict[str, int] = {}
        self.configs: dict[tuple[str, str], int] = {}
        self.payloads: dict[str, int] = {}
        self.facets = FacetIds()
        self.answers = AnswerIds()
        self.encoders = blobs.Encoders()
        self.rows: list[dict[str, Any]] = []
        self.checks: dict[str, list[dict[str, Any]]] = {}  # uid -> its check_results rows
        self.links: dict[str, str] = {}  # uid -> the original's uid
        self.probes = self.inserted = self.unlinked = 0

    def _fail(self, line: int, message: str) -> TransferError:
        return TransferError(self.source, line, message)

    def take(self, connection: Connection, record: dict[str, Any], line: int) -> None:
        kind = record.get("kind")
        if not self.header_seen:
            if kind != FORMAT:
                raise self._fail(line, f"expected a {FORMAT} header line first")
            if record.get("version") != VERSION:
                raise self._fail(line, f"export format version {record.get('version')!r}; "
                                       f"this monitor reads version {VERSION}")
            self.header_seen = True
            return
        try:
            if kind == "target":
                self.targets[record["name"]] = get_or_create(
                    connection, TargetRow.__table__, {"name": record["name"]},
                    # Exports from before recorded traffic have only canaries.
                    {"created_at": _parse_time(record["created_at"]),
                     "kind": record.get("target_kind", TargetKind.CANARY)})
            elif kind == "config":
                target_id = self._target(connection, record["target"], line)
                self.configs[(record["target"], record["config_hash"])] = get_or_create(
                    connection, TargetConfigRow.__table__,
                    {"target_id": target_id, "config_hash": record["config_hash"]},
                    {"config": record["config"],
                     "first_seen_at": _parse_time(record["first_seen_at"])})
            elif kind == "payload":
                digest = hashlib.sha256(canonical_json(record["payload"]).encode()).hexdigest()
                if digest != record["sha256"]:
                    raise self._fail(line, f"payload sha256 {record['sha256']} does not match "
                                           f"its content ({digest})")
                self.payloads[digest] = get_or_create(
                    connection, RequestPayloadRow.__table__, {"sha256": digest},
                    {"payload": record["payload"]})
            elif kind == "probe":
                row = self._probe_row(connection, record, line)
                self.rows.append(row)
                self.checks[row["uid"]] = _check_rows(record.get("checks", []), row, record)
                if record.get("replay_of_uid") is not None:
                    self.links[record["uid"]] = record["replay_of_uid"]
                self.probes += 1
            else:
                raise self._fail(line, f"unknown kind {kind!r}")
        except KeyError as missing:
            raise self._fail(line, f"{kind} without {missing}") from None
        except (TypeError, ValueError) as error:
            raise self._fail(line, f"unreadable {kind}: {error}") from None

    def _target(self, connection: Connection, name: str, line: int) -> int:
        if name not in self.targets:
            found = connection.execute(select(TargetRow.id).where(TargetRow.name == name)).scalar()
            if found is None:
                raise self._fail(line, f"refers to target {name!r}, which neither the lines "
                                       "before it nor the database define")
            self.targets[name] = found
        return self.targets[name]

    def _probe_row(self, connection: Connection, record: dict[str, Any],
                   line: int) -> dict[str, Any]:
        known = {c.key for c in _COLUMNS} | _REFERENCES
        unknown = sorted(set(record) - known)
        if unknown:
            raise self._fail(line, f"unknown probe fields {', '.join(unknown)} (an export from "
                                   "a newer monitor?)")
        missing = sorted(_REQUIRED - set(record))
        if missing:
            raise self._fail(line, f"probe without {', '.join(missing)}")
        if not isinstance(record["uid"], str) or not _UID.fullmatch(record["uid"]):
            raise self._fail(line, f"probe uid {record['uid']!r}: expected 32 hex digits")
        name, config_hash = record["target"], record["config_hash"]
        target_id = self._target(connection, name, line)
        config_id = self.configs.get((name, config_hash))
        if config_id is None:
            config_id = connection.execute(select(TargetConfigRow.id).where(
                TargetConfigRow.target_id == target_id,
                TargetConfigRow.config_hash == config_hash)).scalar()
            if config_id is None:
                raise self._fail(line, f"refers to configuration {config_hash} of {name!r}, "
                                       "which neither the lines before it nor the database hold")
            self.configs[(name, config_hash)] = config_id
        digest = record["request_sha256"]
        payload_id = self.payloads.get(digest)
        if payload_id is None:
            payload_id = connection.execute(select(RequestPayloadRow.id).where(
                RequestPayloadRow.sha256 == digest)).scalar()
            if payload_id is None:
                raise self._fail(line, f"refers to request payload {digest}, which neither the "
                                       "lines before it nor the database hold")
            self.payloads[digest] = payload_id
        row = {c.key: record.get(c.key) for c in _COLUMNS}
        for key in _TIMES:
            row[key] = _parse_time(row[key])
        if "raw_response_base64" in record:
            body = base64.b64decode(record["raw_response_base64"], validate=True)
        else:
            body = record["raw_response"].encode("utf-8")
        row.update(target_id=target_id, target_config_id=config_id, request_payload_id=payload_id)
        # Compressed as Recorder stores them: against the configuration's dictionary in this
        # database and the row's own columns.
        headers = record["response_headers"]
        self.facets.take(connection, row)
        self.answers.take(connection, row)
        return blobs.encoded(row, headers, body, self.encoders.dictionary(
            connection, config_id, bool(row["ok"]), headers, body))

    def flush(self, connection: Connection) -> None:
        """Insert the pending probes (skipping stored uids), then link the new replays."""
        if not self.rows:
            return
        insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
        statement = insert(ProbeRow).on_conflict_do_nothing(index_elements=["uid"])
        # RETURNING, not rowcount: psycopg 3 reports -1 for an INSERT ... ON CONFLICT here.
        inserted = dict(connection.execute(
            statement.returning(ProbeRow.uid, ProbeRow.id), self.rows).all())
        self.inserted += len(inserted)
        # Only the new probes' checks: a probe already stored keeps the outcomes it has.
        check_results.insert_rows(connection, [
            {**check, "probe_id": probe_id} for uid, probe_id in inserted.items()
            for check in self.checks[uid]])
        links = {uid: original for uid, original in self.links.items() if uid in inserted}
        if links:
            ids = dict(connection.execute(select(ProbeRow.uid, ProbeRow.id).where(
                ProbeRow.uid.in_(set(links.values())))).all())
            updates = [{"link_uid": uid, "link_id": ids[original]}
                       for uid, original in links.items() if original in ids]
            self.unlinked += len(links) - len(updates)
            if updates:
                connection.execute(
                    # The table, not the class: an ORM UPDATE with many rows wants their ids.
                    update(_PROBES).where(_PROBES.c.uid == bindparam("link_uid"))
                    .values(replay_of=bindparam("link_id")), updates)
        self.rows = []
        self.checks = {}
        self.links = {}


def _check_rows(checks: Any, probe: dict[str, Any],
                record: dict[str, Any]) -> list[dict[str, Any]]:
    """A probe record's "checks" as check_results rows (`probe` the row it becomes), but for
    the probe's id."""
    if not isinstance(checks, list):
        raise TypeError("checks is not a list")
    rows = []
    for check in checks:
        if not isinstance(check, dict) or set(check) != {"check", "outcome", "reason"}:
            raise TypeError('a check is not {"check": ..., "outcome": ..., "reason": ...}')
        if not isinstance(check["check"], str) or not isinstance(check["reason"], str | None):
            raise TypeError("a check's name or reason is not a string")
        rows.append({"check_name": check["check"], "outcome": CheckOutcome(check["outcome"]).value,
                     "reason": check["reason"], "target_id": probe["target_id"],
                     "started_at": probe["started_at"], "model": record.get("model"),
                     "system_fingerprint": record.get("system_fingerprint")})
    return rows


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"time {value!r} has no UTC offset")
    return moment
