"""A probe's raw exchange as stored: the headers and body, compressed on write against the
dictionary of the probe's configuration and the probe's own parsed columns, and given back
byte for byte on read (store/codec.py describes the formats).

Writers (records.Recorder) find or create a configuration's dictionary once per process.
Readers (probe records, export, recorded answers) decode through `Dictionaries`, which reads
each dictionary once: a probe costs at most one extra lookup, and a thousand probes of one
target the same one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from monitor.domain import ProbeResult
from monitor.store import codec
from monitor.store.schema import codec_dictionaries


class Dictionaries:
    """Stored dictionaries by id, each read once (a dictionary never changes)."""

    def __init__(self) -> None:
        self._known: dict[int, bytes] = {}

    def reader(self, connection: Connection) -> Callable[[int], bytes]:
        def read(ident: int) -> bytes:
            found = self._known.get(ident)
            if found is None:
                found = bytes(connection.execute(
                    select(codec_dictionaries.c.dictionary)
                    .where(codec_dictionaries.c.id == ident)).scalar_one())
                self._known[ident] = found
            return found

        return read


def context(row: Any) -> bytes:
    """What a stored probe's blobs were encoded with beside the dictionary: `row` is a probe
    row or any row with its x_request_id, response_id and response_created_at."""
    return codec.context(row.x_request_id, row.response_id, row.response_created_at)


def body(connection: Connection, row: Any, dictionaries: Dictionaries) -> bytes:
    """The body exactly as it was received (`row` as for `context`, with raw_response_zlib)."""
    return codec.decode(row.raw_response_zlib, context(row), dictionaries.reader(connection))


def headers(connection: Connection, row: Any, dictionaries: Dictionaries) -> dict[str, str]:
    """The (redacted) headers as they were received, in order."""
    return codec.decode_headers(row.response_headers_zlib, context(row),
                                dictionaries.reader(connection))


class Encoders:
    """The dictionary each configuration's probes are compressed against, looked up once per
    configuration; made from a probe's exchange when its configuration has none yet and it
    has an answer (a body, not an error)."""

    def __init__(self) -> None:
        self._known: dict[int, codec.Dictionary | None] = {}  # by configuration id

    def forget(self) -> None:
        """Drop what a rolled-back transaction may have created."""
        self._known.clear()

    def dictionary(self, connection: Connection, config_id: int, ok: bool,
                   headers: dict[str, str], body: bytes) -> codec.Dictionary | None:
        if config_id not in self._known:
            self._known[config_id] = newest(connection, config_id)
        found = self._known[config_id]
        if found is None and ok and body:
            found = self._known[config_id] = create(connection, config_id, headers, body)
        return found

    def for_result(self, connection: Connection, config_id: int,
                   result: ProbeResult) -> codec.Dictionary | None:
        found = self._known.get(config_id)
        if found is not None:  # nearly always: no headers to copy
            return found
        # The dictionary's bytes need not be exact, only alike: no scrubbing needed.
        headers = {name: value.encode("utf-8", "replace").decode()
                   for name, value in result.response_headers.items()}
        return self.dictionary(connection, config_id, result.ok, headers, result.raw_response)


def encoded(row: dict[str, Any], headers: dict[str, str], body: bytes,
            dictionary: codec.Dictionary | None) -> dict[str, Any]:
    """`row` with its raw headers and body compressed: against `dictionary` and the row's own
    columns (format 2), or on their own (format 1) without one."""
    if dictionary is None:
        return {**row, "response_headers_zlib": codec.compress_headers(headers),
                "raw_response_zlib": codec.compress(body)}
    with_context = codec.context(row["x_request_id"], row["response_id"],
                                 row["response_created_at"])
    return {**row, "response_headers_zlib": codec.encode_headers(headers, dictionary,
                                                                 with_context),
            "raw_response_zlib": codec.encode(body, dictionary, with_context)}


def newest(connection: Connection, config_id: int) -> codec.Dictionary | None:
    """The newest dictionary of a configuration, if it has one."""
    found = connection.execute(
        select(codec_dictionaries.c.id, codec_dictionaries.c.dictionary)
        .where(codec_dictionaries.c.target_config_id == config_id)
        .order_by(codec_dictionaries.c.id.desc()).limit(1)).first()
    return None if found is None else codec.Dictionary(int(found.id), bytes(found.dictionary))


def create(connection: Connection, config_id: int, headers: dict[str, str],
           body: bytes) -> codec.Dictionary:
    """A new dictionary for a configuration from one exchange (its headers as stored, then its
    body), cut to what deflate can look back over."""
    data = (codec.headers_bytes(headers) + body)[:codec.DICTIONARY_MAX_BYTES]
    ident = connection.execute(
        insert(codec_dictionaries).returning(codec_dictionaries.c.id),
        {"target_config_id": config_id, "created_at": datetime.now(UTC), "dictionary": data},
    ).scalar_one()
    return codec.Dictionary(int(ident), data)
