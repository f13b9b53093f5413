"""Command start-up: what a whole `monitor` process costs, against bare Python references.

Each command runs as a whole process, several times, interleaved with its references so that a
busy machine slows all of them alike; the figures are medians of the child's CPU time (user +
sys, from wait4) and of wall time, and the ratios are taken within this one run.

- `monitor --help`, `--version` against `python -c "import click"` (goal: at most 3x);
- `monitor status`, `alerts` on the demo database against
  `python -c "import sqlalchemy, click"` (goal: at most 1.5x);
- `monitor probe` of one target against the simulator (started here, outside the timed
  processes) against the same reference plus the simulator's delay (goal: at most 1.5x).

    python bench/cli_start.py [--runs 7] [--delay-ms 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from monitor.sim import SimClient, Simulator


@dataclass(frozen=True)
class Case:
    label: str
    argv: list[str]


@dataclass(frozen=True)
class Median:
    cpu_s: float
    wall_s: float


# As installed: pip writes .pyc files, and an editable checkout gets them on its first run
# unless this is set (it is on some CI machines, which then compile every module every time).
ENVIRON = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(CPU seconds user + sys, wall seconds) of one whole process, which must succeed."""
    with tempfile.TemporaryFile() as output:
        started = time.perf_counter()
        process = subprocess.Popen(argv, cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
                                   env=ENVIRON)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            output.seek(0)
            raise SystemExit(f"{' '.join(argv)} exited {process.returncode}:\n"
                             f"{output.read().decode(errors='replace')}")
    return usage.ru_utime + usage.ru_stime, wall


def measure(cases: list[Case], runs: int, cwd: Path) -> dict[str, Median]:
    samples: dict[str, list[tuple[float, float]]] = {case.label: [] for case in cases}
    for case in cases:  # one unmeasured run each: the OS caches and .pyc files are warm
        run_once(case.argv, cwd)
    for _ in range(runs):
        for case in cases:
            samples[case.label].append(run_once(case.argv, cwd))
    return {label: Median(statistics.median(c for c, _ in found),
                          statistics.median(w for _, w in found))
            for label, found in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--delay-ms", type=int, default=100,
                        help="the simulator's answer delay for `monitor probe`")
    args = parser.parse_args()
    python = sys.executable
    monitor = str(Path(python).parent / "monitor")
    workdir = Path(tempfile.mkdtemp(prefix="monitor-cli-start-"))
    demo_db = f"sqlite:///{workdir / 'demo.db'}"
    subprocess.run([monitor, "demo", "--database", demo_db], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL, env=ENVIRON)
    with Simulator(seed=7) as sim:
        SimClient(sim.url).update(latency={"base_ms": args.delay_ms, "jitter_ms": 0})
        config = workdir / "monitor.toml"
        config.write_text(f'[database]\nurl = "{demo_db}"\n\n[[targets]]\nname = "sim"\n'
                          f'provider = "openai-compatible"\nbase_url = "{sim.url}/v1"\n'
                          'model = "gpt-4o"\n')
        cases = [
            Case("import click", [python, "-c", "import click"]),
            Case("import sqlalchemy, click", [python, "-c", "import sqlalchemy, click"]),
            Case("monitor --help", [monitor, "--help"]),
            Case("monitor --version", [monitor, "--version"]),
            Case("monitor status", [monitor, "status", "-c", str(config)]),
            Case("monitor alerts", [monitor, "alerts", "-c", str(config)]),
            Case("monitor probe", [monitor, "probe", "sim", "-c", str(config)]),
        ]
        found = measure(cases, args.runs, workdir)
    click_ref = found["import click"]
    sa_ref = found["import sqlalchemy, click"]
    delay_s = args.delay_ms / 1000
    goals = {
        "monitor --help": (click_ref, 0.0, 3.0),
        "monitor --version": (click_ref, 0.0, 3.0),
        "monitor status": (sa_ref, 0.0, 1.5),
        "monitor alerts": (sa_ref, 0.0, 1.5),
        "monitor probe": (sa_ref, delay_s, 1.5),
    }
    load = os.getloadavg()
    print(f"{args.runs} runs each, medians; nproc {os.cpu_count()}, "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; simulator delay {args.delay_ms} ms")
    print(f"{'command':<28}{'CPU s':>8}{'wall s':>8}   ratio to reference (CPU, wall)")
    for label, median in found.items():
        line = f"{label:<28}{median.cpu_s:8.3f}{median.wall_s:8.3f}"
        if label in goals:
            ref, delay, goal = goals[label]
            # The delay is idle time: it adds to the wall time and not to the CPU time.
            cpu_ratio = median.cpu_s / ref.cpu_s
            wall_ratio = median.wall_s / (ref.wall_s + delay)
            verdict = "ok" if max(cpu_ratio, wall_ratio) <= goal else "over"
            line += f"   {cpu_ratio:5.2f}x {wall_ratio:5.2f}x  (goal <= {goal:g}x: {verdict})"
        print(line)


if __name__ == "__main__":
    main()
