"""Measurement overhead: what the probe adds on top of the upstream's own delay.

Over N probes against the simulator with a fixed injected delay (no jitter), overhead is the
probe's measured total_ms minus that delay, plain and streaming. For reference the same number
is measured for a bare `requests.Session().post` loop against a minimal loopback server that
answers in one write after the same delay.

    python bench/probe_overhead.py [--probes 1000] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import statistics
import threading
import time

import requests
from canary import canary_target  # bench/ is on sys.path when run as a script

from monitor import probe
from monitor.probe import providers
from monitor.sim import SimClient, Simulator

_MINIMAL_BODY = (
    b'{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"m","choices":'
    b'[{"index":0,"message":{"role":"assistant","content":"pong"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":14,"completion_tokens":1,"total_tokens":15}}'
)


def percentiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


class _MinimalHandler(socketserver.BaseRequestHandler):
    delay_s = 0.0

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(rest) < length:
                rest += sock.recv(65536)
            buffer = rest[length:]
            time.sleep(self.delay_s)
            sock.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(_MINIMAL_BODY)}\r\n\r\n".encode()
                + _MINIMAL_BODY
            )


def bare_requests_overhead(probes: int, delay_ms: float) -> list[float]:
    _MinimalHandler.delay_s = delay_ms / 1000
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _MinimalHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    overheads = []
    with requests.Session() as session:
        for _ in range(probes):
            started = time.perf_counter_ns()
            with session.post(url, json={"model": "m", "messages": []}) as response:
                assert response.content
            overheads.append((time.perf_counter_ns() - started) / 1e6 - delay_ms)
    server.shutdown()
    server.server_close()
    return overheads


def probe_overhead(sim: Simulator, probes: int, delay_ms: float, stream: bool) -> list[float]:
    target = canary_target(f"{sim.url}/v1", stream=stream)
    overheads = []
    with providers.new_session() as session:
        for _ in range(probes):
            result = probe.run(target, session)
            assert result.ok and result.total_ms is not None, result.error_detail
            overheads.append(result.total_ms - delay_ms)
    return overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    rows = []
    with Simulator(seed=1) as sim:
        SimClient(sim.url).update(
            latency={"base_ms": args.delay_ms, "jitter_ms": 0, "ttft_ms": args.delay_ms,
                     "per_token_ms": 0}
        )
        for stream in (False, True):
            probe_overhead(sim, 20, args.delay_ms, stream)  # warm up connections and caches
            values = probe_overhead(sim, args.probes, args.delay_ms, stream)
            rows.append(("probe, " + ("streaming" if stream else "plain"), values))
    rows.append(("bare requests.Session().post", bare_requests_overhead(args.probes, args.delay_ms)))
    print(f"{args.probes} calls each, injected delay {args.delay_ms:g} ms; overhead in ms")
    print(f"{'':32} {'p50':>7} {'p99':>7} {'max':>7}")
    for name, values in rows:
        p50, p99 = percentiles(values)
        print(f"{name:32} {p50:7.3f} {p99:7.3f} {max(values):7.3f}")


if __name__ == "__main__":
    main()
