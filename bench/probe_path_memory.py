"""Memory and CPU of the probe path over a target's life, without HTTP.

A daemon run of minutes sees a few probes a target, while the detectors' windows take ~300 to
fill. This drives the daemon's own steps in one process over `--targets` targets on
PostgreSQL, round after round, each round a minute later: claim the target's slot, store a
copy of one real probe (new uid, the slot's time) with the slot settled, and run detection, from
`--threads` threads at once as the scheduler's would. Every `--every` rounds it prints the
process's anonymous RSS and the CPU a probe since the last line.

    python bench/probe_path_memory.py [--targets 200] [--rounds 600] [--threads 32]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from write_path import drop_postgres, fresh_postgres, standard_canary  # bench/ is on sys.path

from monitor.config import load
from monitor.daemon import Daemon
from monitor.daemon.slots import slot_at
from monitor.domain import ProbeResult, Target
from monitor.sim import Simulator
from monitor.store import db, leases
from monitor.store.records import Recorder
from monitor.store.spool import Spool

PAGE = os.sysconf("SC_PAGE_SIZE")
START = datetime(2026, 11, 1, tzinfo=UTC)


def anonymous_rss_mb() -> float:
    """Resident minus file-backed pages: the process's own memory."""
    with open("/proc/self/statm") as file:
        pages = file.read().split()
    return (int(pages[1]) - int(pages[2])) * PAGE / 1e6


def one_probe(daemon: Daemon, template: ProbeResult, target: Target, round_: int) -> None:
    """What Daemon.probe_target does around the HTTP exchange, at the round's minute."""
    now = START + timedelta(minutes=round_, seconds=1)
    slot = slot_at(target, now)
    claimed = leases.claim(daemon.recorder.engine, daemon.recorder.target_id(target.name), slot,
                           daemon.instance_id)
    result = replace(template, uid=uuid.uuid4().hex, target_name=target.name,
                     config_hash=target.config_hash, started_at=now)
    probe_id = daemon.store(result, slot if claimed is leases.Claim.OURS else None)
    assert probe_id is not None, "the result went to the spool"
    daemon.detect(target, probe_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=600)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--every", type=int, default=50, help="rounds between lines")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with Simulator(seed=1) as sim:
        _, template = standard_canary(sim)
    url = fresh_postgres(args.postgres)
    db.upgrade(url)
    workdir = Path(tempfile.mkdtemp(prefix="monitor-path-"))
    config = workdir / "monitor.toml"
    config.write_text(  # never probed over HTTP: the base URL only has to be valid
        f'[database]\nurl = "{url}"\n\n[defaults]\nprovider = "openai-compatible"\n'
        'base_url = "http://127.0.0.1:9/v1"\nmodel = "gpt-4o"\ninterval = "60s"\n\n'
        + "".join(f'[[targets]]\nname = "t{i:05d}"\n\n' for i in range(args.targets)))
    settings = load(str(config))
    engine = db.open_store(url)
    daemon = Daemon(settings, Recorder(engine), Spool(workdir / "spool.jsonl"))
    print(f"{args.targets} targets x {args.rounds} rounds, {args.threads} threads, PostgreSQL")
    print("  probes a target | anonymous RSS MB | RSS growth a probe | CPU a probe (ms)")
    try:
        assert daemon.register()
        cpu, done, rss = time.process_time(), 0, anonymous_rss_mb()
        with ThreadPoolExecutor(args.threads) as pool:
            for round_ in range(args.rounds):
                list(pool.map(one_probe, [daemon] * args.targets, [template] * args.targets,
                              settings.targets, [round_] * args.targets))
                if (round_ + 1) % args.every == 0:
                    probes = (round_ + 1) * args.targets - done
                    now_rss, now_cpu = anonymous_rss_mb(), time.process_time()
                    print(f"  {round_ + 1 - args.every:>4}-{round_ + 1:<10} | {now_rss:16.1f} | "
                          f"{1e6 * (now_rss - rss) / probes:16.0f} B | "
                          f"{1000 * (now_cpu - cpu) / probes:.2f}", flush=True)
                    cpu, done, rss = now_cpu, done + probes, now_rss
    finally:
        daemon.close()
        engine.dispose()
        drop_postgres(args.postgres, url)
    print(f"  machine: nproc {os.cpu_count()}, load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
