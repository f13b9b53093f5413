"""What [otel] costs a probe thread: the time `Telemetry.record()` takes to build a stored
probe's span and measurements and queue them, with the collector up and with it down (every
export failing), against the probe's own time in the same run as the reference.

The exports themselves run on the SDK's threads; what this measures is what is added after a
probe is stored, before its thread is free for the next slot.

    python bench/otel_record.py [--records 2000] [--rate 100]

--rate 100 is a daemon probing 6,000 targets a minute; --rate 0 records back to back, a
burst no daemon makes, where the SDK's batch encoding competes for the GIL.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from canary import canary_target  # bench/ is on sys.path when run as a script

from monitor import probe
from monitor.domain import OtelSettings, ProbeResult, Target
from monitor.otel.export import Telemetry
from monitor.probe import providers
from monitor.sim import Simulator


class _Accept(BaseHTTPRequestHandler):
    """A collector that takes everything and answers 200 (decoding is not what is measured)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def timings_ms(telemetry: Telemetry, target: Target, result: ProbeResult,
               count: int, rate: float) -> list[float]:
    """`count` records, `rate` a second (0: back to back), each timed."""
    spent = []
    start = time.perf_counter()
    for index in range(count):
        if rate:
            time.sleep(max(0.0, start + index / rate - time.perf_counter()))
        began = time.perf_counter()
        telemetry.record(target, result)
        spent.append((time.perf_counter() - began) * 1000)
    return spent


def row(label: str, values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"| {label} | {cuts[49]:.3f} | {cuts[98]:.3f} | {max(values):.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="records a second (0: no pause)")
    args = parser.parse_args()
    with Simulator(seed=1) as sim:
        target = canary_target(f"{sim.url}/v1", stream=True)
        session = providers.new_session()
        probes = [probe.run(target, session) for _ in range(200)]
        session.close()
    result = probes[-1]
    probe_ms = [p.total_ms for p in probes if p.total_ms is not None]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    lines = ["| per call (ms) | p50 | p99 | max |", "|---|---:|---:|---:|",
             row("probe, streaming, simulator (reference)", probe_ms)]
    for label, port in (("record(), collector up", server.server_address[1]),
                        ("record(), collector down", dead_port)):
        telemetry = Telemetry(OtelSettings(endpoint=f"http://127.0.0.1:{port}", timeout_ms=500))
        try:
            lines.append(row(label, timings_ms(telemetry, target, result, args.records,
                                               args.rate)))
        finally:
            telemetry.shutdown()
    server.shutdown()
    print("\n".join(lines))
    print(f"\n{args.records} records each at {args.rate:g}/s; Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
