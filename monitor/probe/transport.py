"""One HTTP exchange under a total deadline, a decoded-size cap and no redirects.

The upstream is not trusted, so three limits hold whatever it does:

- Deadline. `requests`' timeouts apply to each socket read, so a server sending one byte a
  second never trips them. A `Deadline` starts a watchdog timer; every connection opened or
  reused while it is active registers its socket with it, and when the deadline passes the
  watchdog shuts the socket down. Any read blocked on it (status line, headers, body, stream)
  returns at once, so the whole exchange ends within the deadline, whatever its phase. The
  caller then sees an exception or an early end of body and asks `Deadline.expired`. One
  watchdog thread per process serves every deadline (probe/watchdog.py).
  A socket registers as soon as its TCP connection is made, so a TLS handshake is under the
  deadline too. (Not covered: DNS resolution, which happens before there is a socket; it is
  bounded by the resolver's own timeouts.)
- Decoded size. The body is read in small compressed amounts (`read1`) and decompressed here
  with zlib's `max_length`, so a gzip bomb yields at most the bytes asked for per step and the
  cap applies to decoded bytes as they arrive, never after the fact.
- Redirects. `ProbeSession` never follows one, whatever `allow_redirects` says: the key header
  (Azure's `api-key` is not stripped by requests on a cross-host redirect) must go nowhere but
  the configured host. The probe records a 3xx as a failure.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Self, cast
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
from requests.sessions import merge_setting
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers, get_environ_proxies

from monitor.probe import watchdog

# Compressed bytes per read, and decoded bytes per decompression step: small enough that one
# step of a bomb (zlib expands up to ~1000:1) is cheap, large enough to read a body quickly.
READ_SIZE = 16 * 1024

SUPPORTED_ENCODINGS = "gzip, deflate"  # what we ask for, and all that `Decoder` undoes

# Idle connections kept per upstream. Every target on an upstream shares its session's pool,
# so it must hold what the daemon can have in flight there at once (its scheduler runs at most
# 200 probes): a pool smaller than that closes, and reopens, a connection after most probes.
POOL_SIZE = 200

_active = threading.local()  # the Deadline of the exchange running on this thread, if any


class Deadline:
    """A total time limit for one exchange; use as a context manager around it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._expired = False
        self._done = False
        self._handle: int | None = None  # the watchdog's, while active

    @property
    def expired(self) -> bool:
        return self._expired or time.monotonic() >= self._at

    def remaining(self) -> float:
        return max(self._at - time.monotonic(), 0.0)

    def __enter__(self) -> Self:
        _active.deadline = self
        self._handle = watchdog.call_at(self._at, self._expire)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _active.deadline = None
        if self._handle is not None:
            watchdog.cancel(self._handle)
        with self._lock:
            self._done = True
            self._sockets.clear()

    def watch(self, sock: socket.socket | None) -> None:
        """Shut `sock` down when the deadline passes (at once if it already has)."""
        if sock is None:
            return
        with self._lock:
            if self._done:
                return
            if self._expired:
                _shut(sock)
            else:
                self._sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    # shutdown(), not close(): it wakes a recv() blocked in another thread, and leaves the file
    # descriptor owned by its connection, so no later socket reusing the number is touched.
    # The base-class method also for TLS sockets, whose own shutdown() unwraps the session.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _watch(sock: socket.socket | None) -> None:
    deadline: Deadline | None = getattr(_active, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    """A connection whose sockets register with the active Deadline; the HTTPS one below
    inherits this, so both register at the same three moments."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock)  # before any TLS handshake: a server dripping one is under the deadline
        return sock

    def connect(self) -> None:
        super().connect()
        _watch(self.sock)  # the TLS socket: wrapping detached the one registered above

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock)  # a reused keep-alive connection (None when not yet connected)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class WatchedAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose connections register with the active Deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        """requests' own, less parsing the Set-Cookie headers into the response's cookie jar:
        nothing reads it (a probe keeps no cookies, providers.new_session), and the parse cost
        ~0.14 ms a probe, a tenth of `probe.run`'s CPU against the simulator (OpenAI and the
        simulator send a cookie with every answer). The headers are kept as they came."""
        response = requests.Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(resp.headers)
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url.decode() if isinstance(req.url, bytes) else str(req.url)
        response.request = req
        response.connection = self
        return response

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager


_merge_setting = cast(Callable[[Any, Any], Any], merge_setting)  # untyped in requests


class ProbeSession(requests.Session):
    """A session that never follows redirects and whose connections obey a Deadline."""

    def __init__(self) -> None:
        super().__init__()
        self.max_redirects = 0
        # (scheme, host and port) -> the proxies the environment gives requests to it
        self._environ_proxies: dict[tuple[str, str], dict[str, str]] = {}
        watch(self)

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> Any:
        """requests' own, with the environment's proxies looked up once per upstream instead
        of at every request: that look-up walks os.environ twice (~10 % of a probe's CPU in a
        daemon of ten thousand targets), and its answer depends only on the scheme and host
        (no_proxy) while the process's environment stays as it started."""
        if not self.trust_env or proxies is None or "no_proxy" in proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        scheme, netloc = urlsplit(url)[:2]
        found = self._environ_proxies.get((scheme, netloc))
        if found is None:
            found = self._environ_proxies[(scheme, netloc)] = get_environ_proxies(url)
        for key, value in found.items():
            proxies.setdefault(key, value)
        # The rest as requests does it (reading the CA bundle's variables is cheap).
        if verify is True or verify is None:
            verify = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                      or verify)
        return {"proxies": _merge_setting(proxies, self.proxies),
                "stream": _merge_setting(stream, self.stream),
                "verify": _merge_setting(verify, self.verify),
                "cert": _merge_setting(cert, self.cert)}

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None  # requests follows only what this returns: nothing, ever

    def resolve_redirects(self, *args: Any, **kwargs: Any) -> Iterator[requests.Response]:
        return iter(())


def watch(session: requests.Session) -> None:
    """Mount watched adapters on `session` unless it has them (idempotent)."""
    for prefix in ("http://", "https://"):
        if not isinstance(session.adapters.get(prefix), WatchedAdapter):
            session.mount(prefix, WatchedAdapter(pool_maxsize=POOL_SIZE))


class UnsupportedEncoding(Exception):
    def __init__(self, encoding: str) -> None:
        super().__init__(f"Unsupported Content-Encoding {encoding!r}")
        self.encoding = encoding


class Decoder:
    """Undoes one Content-Encoding a step at a time, never producing more than asked for."""

    def __init__(self, encoding: str) -> None:
        coding = encoding.strip().lower()
        if coding in ("", "identity"):
            self._wbits: int | None = None
        elif coding in ("gzip", "x-gzip"):
            self._wbits = 16 + zlib.MAX_WBITS
        elif coding == "deflate":
            self._wbits = zlib.MAX_WBITS  # zlib-wrapped, as RFC 9110 says; raw is tried next
        else:
            raise UnsupportedEncoding(encoding)
        self._gzip = coding in ("gzip", "x-gzip")
        self._started = False
        self._pending = b""  # input not yet decompressed (zlib's unconsumed tail)
        self._obj = zlib.decompressobj(self._wbits) if self._wbits is not None else None

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def decode(self, data: bytes, max_out: int) -> bytes:
        """Decompress `data` after whatever is pending; at most `max_out` bytes come out, the
        rest stays pending for the next call (with empty `data`)."""
        if self._obj is None:
            return data
        data = self._pending + data
        self._pending = b""
        try:
            out = self._obj.decompress(data, max_out)
        except zlib.error:
            if self._started or self._gzip:
                raise
            # Some servers send raw deflate under "deflate": try that from the start.
            self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._obj.decompress(data, max_out)
        self._started = True
        self._pending = self._obj.unconsumed_tail
        if self._obj.eof and self._obj.unused_data and self._gzip:
            # Another gzip member follows (RFC 1952 allows several): decode it next.
            self._pending = self._obj.unused_data + self._pending
            self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return out


def read_pieces(response: requests.Response, deadline: Deadline,
                max_out: int) -> Iterator[bytes]:
    """The decoded body as it arrives, in pieces of at most `max_out` bytes, until the body
    ends or the deadline passes (then it simply stops: the caller checks `deadline.expired`).
    Transport errors propagate as urllib3/requests exceptions."""
    raw = response.raw
    decoder = Decoder(response.headers.get("content-encoding", ""))
    while not deadline.expired:
        if decoder.pending:
            piece = decoder.decode(b"", max_out)
        else:
            data = raw.read1(READ_SIZE, decode_content=False)
            if not data:
                return
            piece = decoder.decode(data, max_out)
        if piece:
            yield piece
