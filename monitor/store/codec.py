"""Compression for the raw bytes a probe keeps: the response body and the response headers.

A canary exchange is ~1.6 KB of mostly the same JSON every time. Plain zlib gets little out of
one small document, so both are compressed against a preset dictionary of what OpenAI-style
responses look like (header names and values as OpenAI and Cloudflare send them, the shape of a
chat.completion and of a stream chunk). Each blob starts with one byte naming its dictionary,
so a future dictionary can be added without rewriting history: old rows keep decoding with
theirs. Dictionaries are therefore append-only: never edit one that has shipped.
"""

from __future__ import annotations

import json
import zlib

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
_CURRENT = 1


def compress(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY,
                                  _DICTIONARIES[_CURRENT])
    return bytes([_CURRENT]) + compressor.compress(data) + compressor.flush()


def decompress(blob: bytes) -> bytes:
    decompressor = zlib.decompressobj(15, _DICTIONARIES[blob[0]])
    return decompressor.decompress(blob[1:]) + decompressor.flush()


def compress_headers(headers: dict[str, str]) -> bytes:
    return compress(json.dumps(headers, separators=(",", ":"), ensure_ascii=False).encode())


def decompress_headers(blob: bytes) -> dict[str, str]:
    headers: dict[str, str] = json.loads(decompress(blob))
    return headers
