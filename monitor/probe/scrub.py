"""Take every credential out of a ProbeResult before anything stores or prints it.

An upstream may echo the key back anywhere: in the answer (also split across stream chunks),
`model`, `system_fingerprint`, an error message, a header, upper-cased, base64-encoded
(`Basic user:key`), URL-encoded. `scrub_result` is the one place that removes it: it walks every
field of the result (strings, bytes, header dicts, choices, the request payload) after streams
are reassembled, so a key split across chunks is found in the joined text.

What counts as the key, compared case-insensitively:
- the exact value, and its URL-encoded forms (`quote` with and without `/`, `quote_plus`);
- any run of base64 characters (standard or URL-safe, padded or not) that decodes to bytes
  containing the key, whatever precedes it in the encoded text (`Bearer key`, `user:key`).

A result whose parsed text carried the key also has its raw body replaced by a marker: the raw
bytes can hold it in forms no pattern sees (split across SSE events, JSON `\\u` escapes).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Iterable
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

from monitor.domain import ProbeResult

REDACTED = "[redacted]"
RAW_REPLACED = b"[redacted: the response echoed a credential; its raw body is not kept]"

# Runs of base64 characters (both alphabets) with optional padding.
_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]+={0,2}")

T = TypeVar("T")


class Scrubber:
    """Compiled once per probe from the secret values; `None` values and "" are ignored."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._needles = [v.lower().encode("utf-8", "surrogatepass") for v in values]
        forms: set[str] = set()
        for value in values:
            forms.update({value, quote(value), quote(value, safe=""), quote_plus(value)})
        self._literal: re.Pattern[bytes] | None = None
        if forms:
            alternatives = sorted((re.escape(f.encode("utf-8", "surrogatepass")) for f in forms),
                                  key=len, reverse=True)
            self._literal = re.compile(b"|".join(alternatives), re.IGNORECASE)
        # A base64 run shorter than this cannot hold the shortest key.
        self._min_run = min((len(n) * 4 // 3 for n in self._needles), default=0)
        self.hits = 0  # how many values had something removed

    def __bool__(self) -> bool:
        return self._literal is not None

    def data(self, data: bytes) -> bytes:
        if self._literal is None or not data:
            return data
        cleaned = self._literal.sub(REDACTED.encode(), data)
        cleaned = _B64_RUN.sub(self._b64_replacement, cleaned)
        if cleaned != data:
            self.hits += 1
        return cleaned

    def text(self, value: str) -> str:
        if self._literal is None or not value:
            return value
        data = value.encode("utf-8", "surrogatepass")
        cleaned = self.data(data)
        return value if cleaned is data or cleaned == data else cleaned.decode(
            "utf-8", "surrogatepass")

    def _b64_replacement(self, match: re.Match[bytes]) -> bytes:
        run = match.group()
        if len(run) < self._min_run:
            return run
        return REDACTED.encode() if self._decodes_to_secret(run) else run

    def _decodes_to_secret(self, run: bytes) -> bool:
        body = run.rstrip(b"=")
        standard = body.replace(b"-", b"+").replace(b"_", b"/")
        for offset in range(4):  # the encoded key may start at any of the four positions
            part = standard[offset:]
            if len(part) % 4 == 1:
                part = part[:-1]  # a lone trailing character encodes no whole byte
            try:
                decoded = base64.b64decode(part + b"=" * (-len(part) % 4)).lower()
            except (binascii.Error, ValueError):
                continue
            if any(needle in decoded for needle in self._needles):
                return True
        return False

    def value(self, value: T) -> T:
        """Any value a ProbeResult holds, scrubbed recursively."""
        cleaned: Any
        if isinstance(value, str):
            cleaned = self.text(value)
        elif isinstance(value, bytes):
            cleaned = self.data(value)
        elif isinstance(value, dict):
            cleaned = {self.value(k): self.value(v) for k, v in value.items()}
        elif isinstance(value, list | tuple):
            cleaned = type(value)(self.value(v) for v in value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {f.name: self.value(getattr(value, f.name))
                       for f in dataclasses.fields(value)}
            cleaned = dataclasses.replace(value, **changes)
        else:
            cleaned = value
        return cleaned  # type: ignore[no-any-return]


def scrub_result(result: ProbeResult, secrets: Iterable[str]) -> ProbeResult:
    """`result` with every form of every secret in `secrets` replaced by [redacted], in every
    field; the raw body is dropped (replaced by a marker) if the parsed answer held one."""
    scrubber = Scrubber(secrets)
    if not scrubber:
        return result
    raw = result.raw_response
    parsed = dataclasses.replace(result, raw_response=b"")
    cleaned = scrubber.value(parsed)
    if scrubber.hits:
        # Something decoded from the body (or a header) held the key: the raw bytes may hold
        # it in forms the patterns cannot see, so they are not kept.
        return dataclasses.replace(cleaned, raw_response=RAW_REPLACED)
    return dataclasses.replace(cleaned, raw_response=scrubber.data(raw))
