"""What `monitor proxy` adds to a call: calling the same loopback upstream directly and through
the proxy, in one run.

The simulator (latency 0) and the proxy (`monitor proxy`, recording every call in a SQLite
database of its own, or with --no-record only logging one line per call) each run in their own
process, as in use, so neither shares a GIL with the
clients measuring them. The client is a bare http.client keep-alive connection, so what it
measures is the server side.

- plain calls: direct and proxied interleaved one by one (so load on the machine hits both
  alike); added = proxied percentile minus direct percentile;
- streams: time to the first body byte, direct and proxied, interleaved the same way;
- load: --load-calls plain calls through the proxy from --clients concurrent connections:
  calls/s, and the proxy's RSS sampled every tenth of the run (flat means no leak); then a
  tenth as many straight to the simulator, for its own rate.

    python bench/proxy_overhead.py [--calls 2000] [--streams 500] [--load-calls 100000]
                                   [--clients 8] [--no-record] [--config FILE]

--config runs the proxy with another config file, in which a route named "bench" has
upstream = "SIM_URL" (replaced by the simulator's address) and [database] may name another
database (PostgreSQL, say); `monitor db upgrade` is run on it first.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "ping"}],
                   "max_completion_tokens": 16}).encode()
STREAM_BODY = json.dumps({"model": "gpt-4o", "stream": True,
                          "messages": [{"role": "user", "content": "ping"}]}).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}


def start(args: list[str], log: Path) -> tuple[subprocess.Popen[str], str]:
    """A `monitor` subcommand, and the URL it prints as `listening on URL`."""
    process = subprocess.Popen([sys.executable, "-m", "monitor", *args], text=True,
                               stdout=subprocess.PIPE, stderr=log.open("w"))
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.fullmatch(r"listening on (\S+)\s*", line)
    if match is None:
        process.kill()
        raise SystemExit(f"monitor {args[0]} did not start: {line!r}; see {log}")
    threading.Thread(target=process.stdout.read, daemon=True).start()  # drain the rest
    return process, match[1]


class CallFailed(Exception):
    pass


class Client:
    """One keep-alive connection; call() returns (ms to the whole answer, ms to first byte)."""

    def __init__(self, url: str, prefix: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        self.prefix = prefix

    def call(self, body: bytes) -> tuple[float, float]:
        started = time.perf_counter()
        self.connection.request("POST", f"{self.prefix}/v1/chat/completions", body, HEADERS)
        response = self.connection.getresponse()
        first = response.read1(65536)
        first_at = time.perf_counter()
        rest = response.read()
        ended = time.perf_counter()
        if response.status != 200 or not first + rest:
            raise CallFailed(f"call failed: {response.status} {(first + rest)[:200]!r}")
        return (ended - started) * 1000, (first_at - started) * 1000


def percentiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


def interleaved(direct: Client, proxied: Client, body: bytes, count: int,
                pick: int) -> tuple[list[float], list[float]]:
    for _ in range(50):  # warm up connections, pools and caches
        direct.call(body), proxied.call(body)
    direct_ms, proxied_ms = [], []
    for _ in range(count):
        direct_ms.append(direct.call(body)[pick])
        proxied_ms.append(proxied.call(body)[pick])
    return direct_ms, proxied_ms


def rss_kib(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) resident KiB. SQLite reads and writes the database through a
    memory map (PRAGMA mmap_size), so its pages count as resident file pages as the file grows:
    the process's own memory is the anonymous part."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]), int(fields["RssFile"].split()[0])


def load(url: str, prefix: str, calls: int, clients: int,
         pid: int) -> tuple[float, list[tuple[int, int]]]:
    """calls/s through the proxy from `clients` connections, and RSS samples every 10%."""
    remaining = [calls]
    done = [0]
    lock = threading.Lock()
    samples: list[tuple[int, int]] = []
    failures: list[Exception] = []
    step = max(1, calls // 10)

    def work() -> None:
        client = Client(url, prefix)
        while True:
            with lock:
                if remaining[0] == 0 or failures:
                    return
                remaining[0] -= 1
            try:
                client.call(BODY)
            except (CallFailed, OSError, http.client.HTTPException) as failure:
                failures.append(failure)
                return
            with lock:
                done[0] += 1
                if done[0] % step == 0:
                    samples.append(rss_kib(pid))

    threads = [threading.Thread(target=work) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"the load failed: {failures[0]}")
    return calls / (time.perf_counter() - started), samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--load-calls", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-record", action="store_true",
                        help="Run the proxy with --no-record (log lines only).")
    parser.add_argument("--config", type=Path,
                        help='A config whose route "bench" has upstream = "SIM_URL".')
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    # The simulator's default budget (10,000 requests a minute) would turn the load into 429s.
    scenario = work / "scenario.toml"
    scenario.write_text("[rate_limits]\nrequests_per_window = 1000000000\n"
                        "tokens_per_window = 1000000000000\n")
    sim, sim_url = start(["sim", "--port", "0", "--seed", "1", "--scenario", str(scenario)],
                         work / "sim.log")
    text = (args.config.read_text() if args.config else
            f'[database]\nurl = "sqlite:///{work / "monitor.db"}"\n\n'
            '[[routes]]\nname = "bench"\nprovider = "openai"\nupstream = "SIM_URL"\n')
    config = work / "monitor.toml"
    config.write_text(text.replace("SIM_URL", sim_url))
    if not args.no_record:
        subprocess.run([sys.executable, "-m", "monitor", "db", "upgrade", "--config",
                        str(config)], check=True, capture_output=True)
    proxy, proxy_url = start(["proxy", "--port", "0", "--config", str(config),
                              "--spool", str(work / "spool.jsonl"),
                              *(["--no-record"] if args.no_record else [])],
                             work / "proxy.log")
    try:
        direct, proxied = Client(sim_url, ""), Client(proxy_url, "/bench")
        plain = interleaved(direct, proxied, BODY, args.calls, pick=0)
        ttfb = interleaved(direct, proxied, STREAM_BODY, args.streams, pick=1)
        rate, samples = load(proxy_url, "/bench", args.load_calls, args.clients, proxy.pid)
        # The reference: the simulator alone, from as many connections, on a tenth as many.
        direct_rate, _ = load(sim_url, "", max(1, args.load_calls // 10), args.clients, sim.pid)
    finally:
        for process in (proxy, sim):
            process.terminate()
            process.wait(timeout=60)
    logged = sum(1 for _ in (work / "proxy.log").open())
    mode = "logging only (--no-record)" if args.no_record else "recording every call"
    print(f"monitor proxy overhead, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; upstream: monitor sim, latency 0; proxy {mode}")
    print(f"{'':28} {'direct p50':>10} {'p99':>7} {'proxied p50':>11} {'p99':>7} "
          f"{'added p50':>9} {'p99':>7}")
    for name, (a, b), count in (("plain call, whole answer", plain, args.calls),
                                ("stream, first byte", ttfb, args.streams)):
        (a50, a99), (b50, b99) = percentiles(a), percentiles(b)
        print(f"{name + f' ({count})':28} {a50:10.3f} {a99:7.3f} {b50:11.3f} {b99:7.3f} "
              f"{b50 - a50:9.3f} {b99 - a99:7.3f}")
    print(f"load: {args.load_calls} calls from {args.clients} connections: {rate:.0f} calls/s "
          f"through the proxy ({direct_rate:.0f} calls/s to the simulator directly)")
    print(f"proxy RSS (MiB) every {args.load_calls // 10} calls, anonymous: "
          + " ".join(f"{anon / 1024:.1f}" for anon, _ in samples))
    print("  and file-backed (the database's memory map, shared libraries): "
          + " ".join(f"{file / 1024:.1f}" for _, file in samples))
    if not args.no_record:
        sent = 2 * 50 + args.calls + args.streams + args.load_calls  # warm-ups included
        print(f"calls recorded: {recorded(config)} of {sent}")
    print(f"proxy log lines: {logged} (work files in {work})")


def recorded(config: Path) -> int:
    """Probes of traffic targets in the proxy's database, once it has stopped (drained)."""
    code = ("import sys\nfrom sqlalchemy import func, select\nfrom monitor import config\n"
            "from monitor.store import db\nfrom monitor.store.schema import probes\n"
            "engine = db.create(config.load_proxy(sys.argv[1]).settings.database_url)\n"
            "with engine.connect() as c:\n"
            "    print(c.execute(select(func.count(probes.c.id))).scalar_one())\n")
    out = subprocess.run([sys.executable, "-c", code, str(config)], check=True,
                         capture_output=True, text=True)
    return int(out.stdout)


if __name__ == "__main__":
    main()
