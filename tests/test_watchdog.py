"""The one thread per process that ends exchanges at their deadline (probe/watchdog.py).

The deadline's effect on real exchanges (a server dripping a byte a second) is tested in
test_hostile.py; these pin the watchdog itself: order, cancellation, bounded memory, a
failing action, one thread however many deadlines, and a forked child.
"""

from __future__ import annotations

import os
import threading
import time

from monitor.probe import transport, watchdog
from monitor.probe.watchdog import Watchdog

WAIT_S = 10.0  # how long a condition may take on a busy machine


def test_actions_run_in_the_order_of_their_deadlines() -> None:
    dog = Watchdog()
    ran: list[str] = []
    done = threading.Event()
    now = time.monotonic()
    dog.call_at(now + 0.3, lambda: (ran.append("third"), done.set()))
    dog.call_at(now + 0.1, lambda: ran.append("first"))
    dog.call_at(now + 0.2, lambda: ran.append("second"))

    assert done.wait(WAIT_S)
    assert ran == ["first", "second", "third"]


def test_an_action_does_not_run_before_its_deadline() -> None:
    dog = Watchdog()
    ran_at: list[float] = []
    done = threading.Event()
    at = time.monotonic() + 0.2
    dog.call_at(at, lambda: (ran_at.append(time.monotonic()), done.set()))

    assert done.wait(WAIT_S)
    assert ran_at[0] >= at


def test_a_cancelled_action_never_runs() -> None:
    dog = Watchdog()
    ran: list[str] = []
    done = threading.Event()
    now = time.monotonic()
    cancelled = dog.call_at(now + 0.05, lambda: ran.append("cancelled"))
    dog.cancel(cancelled)
    dog.call_at(now + 0.1, lambda: (ran.append("kept"), done.set()))

    assert done.wait(WAIT_S)
    assert ran == ["kept"]  # the later one ran, so the earlier slot had passed


def test_cancelled_deadlines_do_not_pile_up() -> None:
    # Exchanges end long before their deadline: a minute's timeout at 170 probes a second
    # would otherwise keep ~10,000 dead entries.
    dog = Watchdog()
    far = time.monotonic() + 3600
    for _ in range(10_000):
        dog.cancel(dog.call_at(far, lambda: None))
    assert dog.queued() <= 64 + 1


def test_a_failing_action_does_not_stop_the_others() -> None:
    dog = Watchdog()
    done = threading.Event()
    now = time.monotonic()

    def fail() -> None:
        raise RuntimeError("boom")

    dog.call_at(now + 0.05, fail)
    dog.call_at(now + 0.1, done.set)
    assert done.wait(WAIT_S)


def test_every_deadline_shares_one_thread() -> None:
    with transport.Deadline(30):
        pass  # the process's watchdog thread runs from here on, if it did not already
    before = set(threading.enumerate())
    for _ in range(50):
        with transport.Deadline(30):
            assert set(threading.enumerate()) - before == set()  # no thread of its own


def test_a_forked_child_gets_its_own_watchdog() -> None:
    watchdog.cancel(watchdog.call_at(time.monotonic() + 3600, lambda: None))  # parent's runs
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only the forking thread exists here
        try:
            fired = threading.Event()
            watchdog.call_at(time.monotonic() + 0.05, fired.set)
            os.write(writing, b"y" if fired.wait(WAIT_S) else b"n")
        finally:
            os._exit(0)
    os.close(writing)
    try:
        answer = os.read(reading, 1)
    finally:
        os.close(reading)
        os.waitpid(pid, 0)
    assert answer == b"y"
