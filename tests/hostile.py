"""A hostile upstream over loopback: the requested model (or Azure deployment) picks the attack.

Like the simulator's fault scenarios, but for servers that attack the client rather than fail:
redirects to another host, bodies that never end or decompress into gigabytes, bytes trickled
one a second, the key echoed back in every form, values built to crash a parser. Every request
is recorded (path, headers) so a test can tell which host saw the key.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import quote

DEPTH = 200_000
LONG = "x" * 300


def completion(content: str = "pong", **top: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-hostile", "object": "chat.completion", "created": 1_760_000_000,
        "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_hostile",
        "service_tier": "default",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }
    body.update(top)
    return body


def chunk(content: str | None = None, finish: str | None = None, **top: Any) -> bytes:
    delta = {} if content is None else {"content": content}
    event = {"id": "chatcmpl-hostile", "object": "chat.completion.chunk",
             "created": 1_760_000_000, "model": "gpt-4o-2024-08-06",
             "system_fingerprint": "fp_hostile",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **top}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


_bombs: dict[str, bytes] = {}


def bomb(kind: str) -> bytes:
    """gzip of 512 MB (about 500 KB on the wire): zeros, or SSE keep-alive comments."""
    if kind not in _bombs:
        unit = b"\0" * (1 << 20) if kind == "plain" else b": keep-alive\n\n" * 74898
        compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        parts = [compressor.compress(unit) for _ in range(512)]
        _bombs[kind] = b"".join(parts) + compressor.flush()
    return _bombs[kind]


class Handler(BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        self.server.record(self.path, dict(self.headers.items()))
        model = request.get("model")
        if "/openai/deployments/" in self.path:
            model = self.path.split("/openai/deployments/")[1].split("/")[0]
        key = (self.headers.get("api-key")
               or (self.headers.get("authorization") or "").removeprefix("Bearer ") or "nokey")
        try:
            getattr(self, "attack_" + str(model).replace("-", "_"), self.attack_plain)(key)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError):
            self.close_connection = True

    # --- helpers ---

    def send(self, status: int, body: bytes, content_type: str = "application/json",
             **headers: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def json(self, document: Any, status: int = 200, **headers: str) -> None:
        self.send(status, json.dumps(document).encode(), **headers)

    def open_ended(self, content_type: str, **headers: str) -> None:
        """Headers of a close-delimited body: no length, no chunking, ends when we close."""
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("connection", "close")
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.close_connection = True

    def until_closed(self, data: bytes, seconds: float = 60.0) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.server.stopping.is_set():
            self.wfile.write(data)

    def trickle(self, data: bytes) -> None:
        """One byte a second."""
        for byte in data:
            if self.server.stopping.wait(1.0):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()

    # --- attacks ---

    def attack_plain(self, key: str) -> None:
        self.json(completion())

    def attack_redirect(self, key: str) -> None:
        self.send(307, b"", location=f"{self.server.elsewhere}/v1/chat/completions")

    def attack_huge_sse(self, key: str) -> None:
        self.open_ended("text/event-stream")
        piece = chunk("a" * 4000) * 16
        sent = 0
        while sent < 200 << 20:
            self.wfile.write(piece)
            sent += len(piece)

    def attack_gzip_bomb(self, key: str) -> None:
        self.send(200, bomb("plain"), content_encoding="gzip")

    def attack_gzip_bomb_stream(self, key: str) -> None:
        self.open_ended("text/event-stream", content_encoding="gzip")
        self.wfile.write(bomb("sse"))

    def attack_endless(self, key: str) -> None:
        self.open_ended("text/event-stream")
        self.until_closed(b": ping\n\n" * 1024)

    def attack_slow_headers(self, key: str) -> None:
        self.close_connection = True
        self.trickle(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + b"x-a: b\r\n" * 99)

    def attack_slow_body(self, key: str) -> None:
        body = json.dumps(completion()).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        self.trickle(body)

    def attack_slow_stream(self, key: str) -> None:
        self.open_ended("text/event-stream")
        self.trickle(chunk("p") + b": " + b"." * 200)

    def attack_echo_content(self, key: str) -> None:
        self.json(completion(f"your key is {key}, and {key.upper()}"))

    def attack_echo_split(self, key: str) -> None:
        middle = len(key) // 2
        body = (chunk("your key is " + key[:5]) + chunk(key[5:middle]) + chunk(key[middle:])
                + chunk(finish="stop") + b"data: [DONE]\n\n")
        self.send(200, body, "text/event-stream")

    def attack_echo_model(self, key: str) -> None:
        self.json(completion(model=key, system_fingerprint="fp_" + key, id=key))

    def attack_echo_escaped(self, key: str) -> None:
        escaped = "".join(f"\\u{ord(c):04x}" for c in key).encode()
        body = json.dumps(completion("KEY")).encode().replace(b"KEY", escaped)
        self.send(200, body)

    def attack_echo_headers(self, key: str) -> None:
        raw = key.encode()
        self.json(completion(), **{
            "x-echo-upper": key.upper(),
            "x-echo-b64": base64.b64encode(raw).decode(),
            "x-echo-b64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
            "x-echo-bearer": base64.b64encode(b"Bearer " + raw).decode(),
            "x-echo-basic": "Basic " + base64.b64encode(b"user:" + raw).decode(),
            "x-echo-basic-nouser": "Basic " + base64.b64encode(b":" + raw).decode(),
            "x-echo-url": quote("k=" + key, safe=""),
            "x-request-id": "req_" + key.upper(),
        })

    def attack_echo_error(self, key: str) -> None:
        self.json({"error": {"message": f"Incorrect API key provided: {key}"}}, 401)

    def attack_created_huge(self, key: str) -> None:
        self.json(completion(created=10**17))

    def attack_tokens_huge(self, key: str) -> None:
        self.json(completion(usage={"prompt_tokens": 2**70, "completion_tokens": 1,
                                    "total_tokens": -(2**70)}))

    def attack_deep_ok(self, key: str) -> None:
        self.send(200, b'{"choices": ' + b"[" * DEPTH + b"]" * DEPTH + b"}")

    def attack_deep_error(self, key: str) -> None:
        self.send(500, b'{"error": ' + b"[" * DEPTH + b"]" * DEPTH + b"}")

    def attack_deep_stream(self, key: str) -> None:
        event = b"data: " + b"[" * DEPTH + b"]" * DEPTH + b"\n\n"
        self.send(200, chunk("p") + event, "text/event-stream")

    def attack_surrogate(self, key: str) -> None:
        body = json.dumps(completion("LONE")).encode().replace(b"LONE", b"a\\ud800b")
        self.send(200, body.replace(b'"fp_hostile"', b'"fp_\\udfff"'))

    def attack_nul(self, key: str) -> None:
        self.json(completion("a\0b", model="gpt\0-4o", system_fingerprint="fp_\0"),
                  x_request_id="req_\x01nul", openai_version="2020\0-10-01")

    def attack_long_fields(self, key: str) -> None:
        document = completion(model=LONG, system_fingerprint=LONG, id=LONG,
                              service_tier="t" * 50)
        document["choices"][0]["finish_reason"] = "f" * 50
        self.json(document, openai_version="v" * 50, x_request_id="r" * 250,
                  openai_organization="o" * 250)

    def attack_huge_headers(self, key: str) -> None:
        self.json(completion(), x_ratelimit_limit_requests="1e400",
                  x_ratelimit_remaining_tokens="nan", x_ratelimit_reset_tokens="1e400s",
                  openai_processing_ms="inf", retry_after="Fri, 31 Dec 99999 23:59:59 GMT")


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, elsewhere: str = "") -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.elsewhere = elsewhere
        self.stopping = threading.Event()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up on an attack is the expected outcome

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((path, headers))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(5)


def serve(elsewhere: str = "") -> Iterator[HostileServer]:
    with HostileServer(elsewhere) as server:
        yield server


ATTACKS = sorted(name.removeprefix("attack_").replace("_", "-")
                 for name in vars(Handler) if name.startswith("attack_"))
