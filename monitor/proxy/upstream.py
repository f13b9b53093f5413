"""The proxy's side towards the API: persistent connections to each upstream, kept in a small
pool, and the failures of reaching one as a short sentence.

http.client, not requests or urllib3's PoolManager: the proxy needs exactly one connection, a
request written in one send, and the answer's raw bytes (never decompressed, never redirected,
never retried), which is what http.client does with nothing in the way. A connection whose
answer was read to the end and that the upstream keeps open goes back to the pool; anything
else is closed. A request that fails on a reused connection before any answer arrived is sent
once more on a fresh one: the upstream closed the idle connection as we sent on it (keep-alive's
usual race), which is what every client does.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

# Failures that mean a reused connection had been closed by the upstream while idle.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
          ConnectionAbortedError)


class UpstreamError(Exception):
    """The upstream could not be reached or gave no answer; the message is one sentence."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Upstream:
    """One route's upstream: where it is, and its idle connections ready for the next call."""

    def __init__(self, url: str, *, connect_timeout_s: float, read_timeout_s: float,
                 pool_size: int) -> None:
        parts = urlsplit(url)
        self.url = url
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.host_header = parts.netloc  # config refuses userinfo, so this is host[:port]
        self.base_path = parts.path.rstrip("/")
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._pool_size = pool_size
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._tls = ssl.create_default_context() if self.https else None

    def send(self, method: str, path: str, headers: Sequence[tuple[str, str]],
             body: bytes) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request and read the answer's status line and headers; UpstreamError if
        that fails. The caller reads the body, then release()s or discard()s the connection."""
        connection, reused = self._take()
        try:
            return connection, self._exchange(connection, method, path, headers, body)
        except _STALE:
            connection.close()
            if not reused:
                raise UpstreamError(f"{self._where().capitalize()} closed the connection "
                                    "without answering") from None
        except (TimeoutError, OSError, http.client.HTTPException) as error:
            connection.close()
            raise self._failure(error, connecting=False) from None
        connection, _ = self._take(fresh=True)
        try:
            return connection, self._exchange(connection, method, path, headers, body)
        except (TimeoutError, OSError, http.client.HTTPException) as error:
            connection.close()
            raise self._failure(error, connecting=False) from None

    def _exchange(self, connection: http.client.HTTPConnection, method: str, path: str,
                  headers: Sequence[tuple[str, str]], body: bytes) -> http.client.HTTPResponse:
        # Host and Accept-Encoding come from the caller's headers, as the app sent them.
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders(body or None)  # headers and a bytes body go out in one send
        return connection.getresponse()

    def release(self, connection: http.client.HTTPConnection) -> None:
        """Keep a connection whose answer was read to the end for the next call."""
        with self._lock:
            if len(self._idle) < self._pool_size:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _take(self, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        if not fresh:
            with self._lock:
                if self._idle:
                    return self._idle.pop(), True  # the most recent: the least likely stale
        connection: http.client.HTTPConnection
        if self._tls is not None:
            connection = http.client.HTTPSConnection(self.host, self.port,
                                                     timeout=self._connect_timeout_s,
                                                     context=self._tls)
        else:
            connection = http.client.HTTPConnection(self.host, self.port,
                                                    timeout=self._connect_timeout_s)
        try:
            connection.connect()
        except (TimeoutError, OSError) as error:
            connection.close()
            raise self._failure(error, connecting=True) from None
        assert connection.sock is not None  # connect() succeeded
        connection.sock.settimeout(self._read_timeout_s)  # connected: now the answer's timeout
        return connection, False

    def _where(self) -> str:
        return f"the upstream {self.host_header}"

    def _failure(self, error: BaseException, *, connecting: bool) -> UpstreamError:
        where = self._where()
        if isinstance(error, TimeoutError):
            if connecting:
                return UpstreamError(f"Connecting to {where} timed out after "
                                     f"{self._connect_timeout_s * 1000:.0f} ms", timed_out=True)
            return UpstreamError(f"{where.capitalize()} sent no answer within "
                                 f"{self._read_timeout_s * 1000:.0f} ms", timed_out=True)
        if isinstance(error, socket.gaierror):
            return UpstreamError(f"Cannot resolve the host of {where}")
        if isinstance(error, ConnectionRefusedError):
            return UpstreamError(f"{where.capitalize()} refused the connection")
        if isinstance(error, ssl.SSLError):
            return UpstreamError(f"TLS with {where} failed: {error.reason or error}")
        if isinstance(error, http.client.HTTPException):
            return UpstreamError(f"{where.capitalize()} sent an answer that is not HTTP "
                                 f"({type(error).__name__})")
        detail = error.strerror if isinstance(error, OSError) and error.strerror else error
        verb = "Connecting to" if connecting else "Talking to"
        return UpstreamError(f"{verb} {where} failed: {detail}")
