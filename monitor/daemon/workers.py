"""`monitor run --workers N`: the daemon as N processes, each probing its share of the targets.

Python runs one thread at a time, so one daemon process uses one core. At fleet scale on
PostgreSQL that core was the limit while the other was half idle. Each target belongs to one
worker, by a stable hash of its name: no two workers ever probe the same target, and a reload
keeps every target where it was. Worker 0 also runs what there is one of per instance:
rollups, notifications, pruning and the dashboard. Worker i > 0 spools to a file of its own
(`spool_of`).

Worker 0 is the process that was started: it imports what a daemon runs, forks the others
before any thread or connection exists (so they share those pages: a separate supervisor
process would hold a third copy of what they changed, ~45 MB), and relays signals to them:
SIGTERM and SIGINT stop them (warm, a second one cold), SIGHUP reloads them. When one of them
ends on its own, worker 0 stops as if signalled, and `monitor run` exits 1 once all have
ended: the supervisor (systemd) restarts the instance whole.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import sys
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.domain import Target

if TYPE_CHECKING:
    from monitor.daemon.steps import Daemon

log = logging.getLogger("monitor")

# prctl(2): the signal a process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def share(targets: Sequence[Target], worker: int, workers: int) -> tuple[Target, ...]:
    """The targets `worker` (0-based) of `workers` probes: CRC-32 of the name, not hash(),
    which differs between processes."""
    return tuple(t for t in targets if zlib.crc32(t.name.encode()) % workers == worker)


def spool_of(path: str, worker: int) -> str:
    """The spool file of `worker`: the one given for worker 0, one beside it for the others."""
    return path if worker == 0 else f"{path}.worker{worker}"


def leftover_spools(path: str, workers: int) -> list[str]:
    """Spool files of workers that no longer exist (the instance ran with more workers
    before): worker 0 drains them, so that fewer workers lose nothing."""
    base = Path(path)
    found = []
    for candidate in base.parent.glob(f"{base.name}.worker*"):
        index = candidate.name.removeprefix(f"{base.name}.worker")
        if index.isdigit() and int(index) >= workers:
            found.append(str(candidate))
    return sorted(found)


def preload(database_url: str) -> None:
    """Import what every worker runs before forking them: its pages are then shared between
    them (about 40 MB of the 70 MB a daemon process starts with), not loaded once by each.
    gc.freeze() keeps the collector from writing to those objects, which would copy them."""
    import importlib

    from monitor.store import db

    for module in ("monitor.daemon.steps", "monitor.daemon.service"):
        importlib.import_module(module)
    db.create(database_url).dispose()  # the driver and SQLAlchemy's dialect for it
    gc.collect()
    gc.freeze()


class Family:
    """Worker 0's view of the other workers: signals relayed to them, their ends watched (a
    thread each, from the start)."""

    def __init__(self, children: dict[int, int]) -> None:
        self._children = children  # pid -> worker index, while it runs
        self._lock = threading.Lock()
        self._stopping = False
        self.failed = False  # a worker failed, or ended unasked
        self._on_unasked_end: Callable[[], None] | None = None
        self._ended_unasked = False
        self._watchers = [
            threading.Thread(target=self._wait, args=(pid,), daemon=True,
                             name=f"monitor-worker-{worker}")
            for pid, worker in children.items()]
        for watcher in self._watchers:
            watcher.start()

    def relay(self, signum: int) -> None:
        """Send the signal worker 0 received to every other worker still running."""
        with self._lock:
            self._stopping = self._stopping or signum != signal.SIGHUP
            pids = list(self._children)
        for pid in pids:
            _signal(pid, signum)

    def stop(self) -> None:
        """Tell every other worker to stop (warm), unless they were told already: a second
        SIGTERM would stop them cold."""
        with self._lock:
            if self._stopping:
                return
        self.relay(signal.SIGTERM)

    def watch(self, on_unasked_end: Callable[[], None]) -> None:
        """Call `on_unasked_end` (stop worker 0) when a worker ends before worker 0 was told
        to stop; at once if one already has."""
        with self._lock:
            self._on_unasked_end = on_unasked_end
            ended = self._ended_unasked
        if ended:
            on_unasked_end()

    def _wait(self, pid: int) -> None:
        _, wait_status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(wait_status)
        with self._lock:
            worker = self._children.pop(pid)
            unasked = not self._stopping
            self.failed = self.failed or code != 0 or unasked
            self._ended_unasked = self._ended_unasked or unasked
            tell = self._on_unasked_end if unasked else None
        if unasked:
            log.error("worker %d ended on its own (exit status %d): stopping the others",
                      worker, code)
        if tell is not None:
            tell()

    def join(self) -> None:
        """Wait until every other worker has ended (after relaying a stop)."""
        for watcher in self._watchers:
            watcher.join()


def store_leftovers(daemon: Daemon, paths: list[str]) -> None:
    """Write the results waiting in spool files of workers that no longer exist
    (leftover_spools) to the database, at start; what cannot be written now stays in its
    file for the next start."""
    from sqlalchemy.exc import SQLAlchemyError

    from monitor.store.failures import describe
    from monitor.store.spool import Spool

    for path in paths:
        leftover = Spool(path)
        if leftover.empty():
            continue
        try:
            written = leftover.drain(daemon.recorder.save_many) if daemon.register() else 0
        except (SQLAlchemyError, OSError) as error:
            log.warning("%s: %s", path, describe(error))
            written = 0
        if written:
            log.info("wrote %d probes left in %s by a worker of an earlier run", written, path)
        if not leftover.empty():
            log.warning("%s still holds probes of an earlier run's worker: they wait for the "
                        "next start", path)


def spawn(workers: int, run_worker: Callable[[int], None]) -> Family:
    """Fork workers 1 .. workers-1, each calling run_worker(its index) and exiting; the
    caller goes on as worker 0."""
    children: dict[int, int] = {}
    sys.stdout.flush()
    sys.stderr.flush()
    for worker in range(1, workers):
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            os._exit(_worker_main(worker, run_worker))
        children[pid] = worker
    return Family(children)


def _worker_main(worker: int, run_worker: Callable[[int], None]) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the schedule can reload (Service)
    # Signals come from worker 0 only: out of the terminal's process group (a Ctrl-C would
    # reach the worker twice, directly and relayed, and a second signal is a cold stop), and
    # a warm stop if worker 0 is killed outright.
    os.setpgid(0, 0)
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: a killed parent leaves its workers to be stopped by hand
    try:
        run_worker(worker)
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        log.exception("worker %d failed", worker)
        return 1
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # ended meanwhile: its status is collected by the wait
