"""Compression for the raw bytes a probe keeps: the response body and the response headers.

A canary exchange is ~1.6 KB of mostly the same JSON every time. Plain zlib gets little out of
one small document, so both are compressed against a preset dictionary. Each blob starts with
one byte naming its format, so a better one can ship without rewriting history: old rows keep
decoding with theirs. Formats and the built-in dictionary are append-only: never edit one that
has shipped.

- 0: the bytes as they are; what retention leaves (`stored(b"")`, `stored(b"{}")`).
- 1: zlib against the built-in dictionary of what OpenAI-style responses look like (header
  names and values as OpenAI and Cloudflare send them, a chat.completion, a stream chunk).
  Self-contained: `decompress(blob)`.
- 2: raw deflate against the built-in dictionary, then a dictionary of the target's own (an
  earlier exchange of the same configuration, stored once in codec_dictionaries and named by
  id in the blob), then the probe's `context`: the values unique to it that its parsed columns
  already hold (request id, response id, created). Each probe then stores little beyond what
  changed since the dictionary; nothing chains to a previous probe. Decoding needs the same
  dictionary and context (`decode`); two bytes of CRC-32 make a mismatch an error rather than
  wrong bytes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

_DICTIONARY_V1 = (
    # Headers, as headers.capture stores them (lower-case names, compact JSON).
    b'{"date":"Thu, 01 Jan 2026 00:00:00 GMT","content-type":"application/json",'
    b'"transfer-encoding":"chunked","connection":"keep-alive",'
    b'"access-control-expose-headers":"X-Request-ID","openai-organization":"user-",'
    b'"openai-processing-ms":"","openai-project":"proj_","openai-version":"2020-10-01",'
    b'"x-envoy-upstream-service-time":"","x-ratelimit-limit-requests":"",'
    b'"x-ratelimit-limit-tokens":"","x-ratelimit-remaining-requests":"",'
    b'"x-ratelimit-remaining-tokens":"","x-ratelimit-reset-requests":"ms",'
    b'"x-ratelimit-reset-tokens":"ms","x-request-id":"req_",'
    b'"strict-transport-security":"max-age=31536000; includeSubDomains; preload",'
    b'"cf-cache-status":"DYNAMIC","set-cookie":"[redacted]","x-content-type-options":"nosniff",'
    b'"server":"cloudflare","cf-ray":"-SJC","alt-svc":"h3=\\":443\\"; ma=86400",'
    b'"content-length":"","apim-request-id":"","x-ms-region":"","azureml-model-session":"",'
    b'"x-ms-rai-invoked":"true","x-ms-client-request-id":"","retry-after":"",'
    b'"content-type":"text/event-stream; charset=utf-8","cache-control":"no-cache",'
    b'"x-accel-buffering":"no","vary":"Origin","server":"uvicorn"}'
    # A stream chunk, compact as servers send them.
    b'data: {"id":"chatcmpl-","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"service_tier":"default","system_fingerprint":"fp_","choices":[{"index":0,"delta":'
    b'{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],'
    b'"usage":null,"obfuscation":""}\n\ndata: [DONE]\n\n'
    # A chat.completion, indented as OpenAI sends it.
    b'{\n  "id": "chatcmpl-",\n  "object": "chat.completion",\n  "created": 17,\n'
    b'  "model": "gpt-4o-2024-08-06",\n  "choices": [\n    {\n      "index": 0,\n'
    b'      "message": {\n        "role": "assistant",\n        "content": "",\n'
    b'        "refusal": null,\n        "annotations": []\n      },\n'
    b'      "logprobs": null,\n      "finish_reason": "stop"\n    }\n  ],\n  "usage": {\n'
    b'    "prompt_tokens": 1,\n    "completion_tokens": 1,\n    "total_tokens": 1,\n'
    b'    "prompt_tokens_details": {\n      "cached_tokens": 0,\n      "audio_tokens": 0\n'
    b'    },\n    "completion_tokens_details": {\n      "reasoning_tokens": 0,\n'
    b'      "audio_tokens": 0,\n      "accepted_prediction_tokens": 0,\n'
    b'      "rejected_prediction_tokens": 0\n    }\n  },\n  "service_tier": "default",\n'
    b'  "system_fingerprint": "fp_"\n}'
)

_DICTIONARIES = {1: _DICTIONARY_V1}
_STORED = 0
_CURRENT = 1
_WITH_DICTIONARY = 2
# Deflate looks back 32 KB: the built-in dictionary, a target's and the context must fit.
DICTIONARY_MAX_BYTES = 24 * 1024
# Format 2's deflate state: its hash table has 2**(memLevel + 7) entries, all cleared for each
# blob. A few KB of dictionary and data need no more than level 6's 8,192 (a tenth of the
# encoding's CPU less than 9's 65,536). Only how matches are found depends on it, not how
# they decode: on 200 real canary probes every blob came out byte for byte the same.
_MEMORY_LEVEL = 6


class CodecError(ValueError):
    """A stored blob that does not decode to what was stored (wrong dictionary or context)."""


@dataclass(frozen=True)
class Dictionary:
    """A target's dictionary as the encoder uses it: its row id and its bytes."""

    id: int
    data: bytes
    # What every blob against it starts with: made once, not for each of a probe's two blobs.
    # (Not the built-in dictionary joined to its bytes: 4 KB more for each of a fleet's
    # configurations, whose bytes blobs.Encoders shares, for ~1 us a blob.)
    _head: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_head", bytes([_WITH_DICTIONARY]) + _varint(self.id))


# Headers as they are compressed; one encoder for all (json.dumps with options makes one a call).
_HEADERS_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def compress(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY,
                                  _DICTIONARIES[_CURRENT])
    return bytes([_CURRENT]) + compressor.compress(data) + compressor.flush()


def stored(data: bytes) -> bytes:
    """`data` in format 0, uncompressed: for bytes too few to compress (an emptied body)."""
    return bytes([_STORED]) + data


def decompress(blob: bytes) -> bytes:
    """The bytes of a self-contained blob (formats 0 and 1)."""
    if blob[0] == _STORED:
        return blob[1:]
    decompressor = zlib.decompressobj(15, _DICTIONARIES[blob[0]])
    return decompressor.decompress(blob[1:]) + decompressor.flush()


def compress_headers(headers: dict[str, str]) -> bytes:
    return compress(headers_bytes(headers))


def decompress_headers(blob: bytes) -> dict[str, str]:
    headers: dict[str, str] = json.loads(decompress(blob))
    return headers


def headers_bytes(headers: dict[str, str]) -> bytes:
    """Headers as they are compressed: compact JSON, in the order received."""
    return _HEADERS_JSON.encode(headers).encode()


def context(x_request_id: str | None, response_id: str | None,
            response_created_at: datetime | None) -> bytes:
    """A probe's values that its headers and body repeat, as its parsed columns store them."""
    created = "" if response_created_at is None else str(int(response_created_at.timestamp()))
    return f"{x_request_id or ''}\n{response_id or ''}\n{created}".encode()


def encode(data: bytes, dictionary: Dictionary, context: bytes) -> bytes:
    """`data` in format 2: against `dictionary` and the probe's `context` (see the module)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, _MEMORY_LEVEL, zlib.Z_DEFAULT_STRATEGY,
                                  _DICTIONARY_V1 + dictionary.data + context)
    check = (zlib.crc32(data) & 0xFFFF).to_bytes(2, "big")
    return dictionary._head + check + compressor.compress(data) + compressor.flush()


def encode_headers(headers: dict[str, str], dictionary: Dictionary, context: bytes) -> bytes:
    return encode(headers_bytes(headers), dictionary, context)


def dictionary_id(blob: bytes) -> int | None:
    """The id of the target dictionary a blob needs, or None for a self-contained one."""
    return _read_varint(blob, 1)[0] if blob[0] == _WITH_DICTIONARY else None


def decode(blob: bytes, context: bytes, dictionaries: Callable[[int], bytes]) -> bytes:
    """The bytes of a blob in any format; `dictionaries(id)` gives a stored dictionary's bytes
    (called only for format 2)."""
    if blob[0] != _WITH_DICTIONARY:
        return decompress(blob)
    ident, start = _read_varint(blob, 1)
    decompressor = zlib.decompressobj(-15, _DICTIONARY_V1 + dictionaries(ident) + context)
    try:
        data = decompressor.decompress(blob[start + 2:]) + decompressor.flush()
    except zlib.error as error:
        raise CodecError(f"blob with dictionary {ident} does not decode: {error}") from None
    if not decompressor.eof or (zlib.crc32(data) & 0xFFFF).to_bytes(2, "big") != blob[
            start:start + 2]:
        raise CodecError(f"blob with dictionary {ident} does not decode to what was stored")
    return data


def decode_headers(blob: bytes, context: bytes,
                   dictionaries: Callable[[int], bytes]) -> dict[str, str]:
    headers: dict[str, str] = json.loads(decode(blob, context, dictionaries))
    return headers


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(blob: bytes, start: int) -> tuple[int, int]:
    """(value, index after it) of the varint at blob[start]."""
    value = shift = 0
    position = start
    while True:
        byte = blob[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return value, position
        shift += 7
