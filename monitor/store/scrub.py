"""Values made storable before they reach a column: what the parser let through that no
database can hold (NUL, lone surrogates, integers beyond 64 bits)."""

from __future__ import annotations

import re
from typing import Any

# What no column can hold: PostgreSQL text and jsonb refuse NUL, and a lone surrogate (a
# half of a UTF-16 pair, which JSON's \u escapes can produce) cannot be encoded as UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# BIGINT, the widest integer both databases store.
_INT64 = range(-(2**63), 2**63)
_CONTAINERS = {list, tuple, dict}
_SCRUBBED = {str, int, *_CONTAINERS}


def storable(value: Any) -> Any:
    """`value` with every string made storable (NUL and lone surrogates become U+FFFD), through
    dicts, lists and tuples; integers beyond 64 bits become None. The raw body and headers keep
    what was sent; this is for the parsed columns, whatever the parser let through."""
    if type(value) is str:
        # Nearly every string is ASCII, where only NUL needs replacing: two C-speed checks
        # instead of a regex.
        if value.isascii():
            return value.replace("\x00", "\ufffd") if "\x00" in value else value
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value in _INT64 else None
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def scrubbed(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with storable() applied to what can carry an unstorable string or integer (the
    keys are ours; floats, times and bytes are left to their columns' types: schema.Float32
    drops a float beyond float32's range). Nearly always every string is ASCII without NUL and
    every integer fits: one check of them all, then only containers (the choices) are walked,
    instead of a call per column."""
    text = "".join([value for value in values.values() if type(value) is str])
    ints = [value for value in values.values() if type(value) is int]
    if text.isascii() and "\x00" not in text and (
            not ints or (min(ints) in _INT64 and max(ints) in _INT64)):
        for key, value in values.items():
            if type(value) in _CONTAINERS:
                values[key] = storable(value)
        return values
    return {key: storable(value) if type(value) in _SCRUBBED else value
            for key, value in values.items()}
