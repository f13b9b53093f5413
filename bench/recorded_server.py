"""Recorded-answer server (`monitor sim --recorded`): requests/s and latency over a large store.

The store holds --probes copies of one real probe of the standard canary, spread over
--payloads distinct request payloads (the prompt carries a number), bulk-inserted with
Recorder.save_many. The server runs in its own process. A few client threads send requests
over keep-alive connections in three runs: cold (every payload asked for the first time, so every
lookup goes to the database), warm (a small set asked again and again, so answers come from the
cache), and unknown (payloads never stored, which get a 404).

    python bench/recorded_server.py [--probes 1000000] [--payloads 100000] [--clients 4]
                                    [--requests 20000] [--store /tmp/recorded-bench.db]

The store is kept at --store and reused when it already holds --probes probes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from write_path import standard_canary  # bench/ is on sys.path when run as a script

from monitor.detect.stats import percentile
from monitor.probe import providers
from monitor.sim import Simulator
from monitor.store import db
from monitor.store.records import Recorder, count_probes

BATCH = 5000



def _pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, 0 when there are none."""
    return percentile(sorted(values), q) if values else 0.0


def payload(template: Any, number: int) -> dict[str, Any]:
    body = dict(template.request_payload)
    body["messages"] = [{"role": "user", "content": f"Reply with the single word: pong {number}"}]
    return body


def build(url: str, template: Any, probes: int, payloads: int) -> None:
    engine = db.open_store(url)
    if count_probes(engine) >= probes:
        print(f"  reusing the store: {count_probes(engine)} probes")
        engine.dispose()
        return
    recorder = Recorder(engine)
    recorder.register(template.target_name, template.config_hash, {})
    start = datetime.now(UTC) - timedelta(seconds=probes)
    began = time.perf_counter()
    bodies = [payload(template, n) for n in range(payloads)]
    for first in range(count_probes(engine), probes, BATCH):
        recorder.save_many([
            replace(template, uid=uuid.uuid4().hex, started_at=start + timedelta(seconds=i),
                    request_payload=bodies[i % payloads])
            for i in range(first, min(first + BATCH, probes))])
        if first % 100_000 == 0:
            print(f"  {first} stored, {time.perf_counter() - began:.0f} s", flush=True)
    engine.dispose()
    print(f"  built {probes} probes in {time.perf_counter() - began:.0f} s")


def client_run(url: str, bodies: list[bytes], clients: int) -> tuple[float, list[float], int]:
    """Send every body once, split over `clients` keep-alive connections; (elapsed s,
    latencies ms, non-200 answers)."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def work(share: list[bytes]) -> None:
        connection = http.client.HTTPConnection(host, int(port))
        mine = []
        bad = 0
        for body in share:
            started = time.perf_counter()
            connection.request("POST", "/v1/chat/completions", body,
                               {"content-type": "application/json"})
            response = connection.getresponse()
            response.read()
            mine.append((time.perf_counter() - started) * 1000)
            bad += response.status != 200
        connection.close()
        with lock:
            latencies.extend(mine)
            failures[0] += bad

    threads = [threading.Thread(target=work, args=(bodies[i::clients],)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, sorted(latencies), failures[0]


def report(name: str, elapsed: float, latencies: list[float], failures: int) -> None:
    print(f"  {name:<8} {len(latencies) / elapsed:7.0f} req/s   p50 "
          f"{_pct(latencies, 50):6.2f} ms   p99 {_pct(latencies, 99):6.2f}"
          f" ms   unexpected status: {failures}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=1_000_000)
    parser.add_argument("--payloads", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--store", default="/tmp/recorded-bench.db")
    args = parser.parse_args()
    with Simulator(seed=1) as sim:
        target, template = standard_canary(sim)
    assert providers.payload(target) == template.request_payload
    url = f"sqlite:///{args.store}"
    db.upgrade(url)
    print(f"store: {args.probes} probes over {args.payloads} payloads ({args.store})")
    build(url, template, args.probes, args.payloads)
    code = ("import sys; from monitor import recorded; from monitor.store import db; "
            "recorded.serve(db.open_store(sys.argv[1]), '127.0.0.1', 0, None, False, "
            "lambda line: print(line, flush=True))")
    server = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        server_url = server.stdout.readline().strip().removeprefix("listening on ")
        count = min(args.requests, args.payloads)
        cold = random.Random(1).sample(range(args.payloads), count)
        hot = [n % 1000 for n in range(args.requests)]

        def encode(numbers: list[int]) -> list[bytes]:
            return [json.dumps(payload(template, n)).encode() for n in numbers]

        print(f"{args.clients} clients, keep-alive; the server in its own process")
        report("cold", *client_run(server_url, encode(cold), args.clients))
        client_run(server_url, encode(hot[:1000]), args.clients)  # warm the cache
        report("warm", *client_run(server_url, encode(hot), args.clients))
        unknown = [args.payloads + n for n in range(count)]
        elapsed, latencies, failures = client_run(server_url, encode(unknown), args.clients)
        assert failures == len(unknown)
        report("unknown", elapsed, latencies, 0)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
