"""The dashboard and the HTML report in a real headless Chromium, driven over the DevTools
protocol on a pipe (stdlib only): charts drawn, refresh working, no console message, no
exception, no blocked resource, and the same charts with JavaScript off.

Chromium is the Debian package `chromium`; .ci/run installs it. Without it these tests fail,
they never skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from report_fixtures import (
    NOW,
    SCRIPT,
    Sources,
    charts_of,
    hostile_document,
    parse_html,
    running,
    sections,
)
from sqlalchemy import Engine, select

from monitor.domain import ErrorKind, ProbeResult, RateLimits
from monitor.render import render_html
from monitor.render.charts import LEFT, RIGHT, WIDTH
from monitor.store.models import ProbeRow
from monitor.store.records import Recorder
from monitor.web.app import make_app
from monitor.web.serving import build_app
from tests.conftest import MakeSettings

_TIMEOUT_S = 30.0


class Browser:
    """One headless Chromium; `open(url)` loads a page in a fresh tab and returns it."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_chrome, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome = os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4. The pipe ends are first
        # moved above 10 so that moving them to 3 and 4 cannot overwrite one another.
        high_in = fcntl.fcntl(to_chrome, fcntl.F_DUPFD, 10)
        high_out = fcntl.fcntl(from_chrome, fcntl.F_DUPFD, 10)
        for fd in (to_chrome, from_chrome):
            os.close(fd)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                 f"--user-data-dir={profile}", "--no-first-run", "--mute-audio",
                 "about:blank"]
        self._process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{high_in} 4>&{high_out}', executable, *flags],
            pass_fds=(high_in, high_out), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(high_in)
        os.close(high_out)
        self._next_id = 0
        self._answers: dict[int, dict[str, Any]] = {}
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_chrome, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        with self._lock:
                            self._answers[message["id"]] = message
                            self._lock.notify_all()
                    else:
                        self._events.put(message)

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        with self._lock:
            if not self._lock.wait_for(lambda: ident in self._answers, _TIMEOUT_S):
                raise AssertionError(f"chromium did not answer {method} in {_TIMEOUT_S} s")
            answer = self._answers.pop(ident)
        assert "error" not in answer, (method, answer["error"])
        result: dict[str, Any] = answer["result"]
        return result

    @contextmanager
    def open(self, url: str, *, javascript: bool = True) -> Iterator[Page]:
        """A fresh tab with `url` loaded; closed afterwards, so it stops refreshing."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        try:
            session = self.send("Target.attachToTarget",
                                {"targetId": target, "flatten": True})["sessionId"]
            page = Page(self, session)
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable", session=session)
            if not javascript:
                self.send("Emulation.setScriptExecutionDisabled", {"value": True}, session)
            self.send("Page.navigate", {"url": url}, session)
            page.wait_for("Page.loadEventFired")
            yield page
        finally:
            self.send("Target.closeTarget", {"targetId": target})

    def next_event(self, timeout_s: float) -> dict[str, Any] | None:
        try:
            return self._events.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        os.close(self._to_chrome)  # Chromium exits when its command pipe closes
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self._browser = browser
        self._session = session
        self.events: list[dict[str, Any]] = []

    def _collect(self, timeout_s: float) -> dict[str, Any] | None:
        event = self._browser.next_event(timeout_s)
        if event is not None and event.get("sessionId") == self._session:
            self.events.append(event)
        return event

    def wait_for(self, method: str) -> None:
        deadline = time.monotonic() + _TIMEOUT_S
        while time.monotonic() < deadline:
            event = self._collect(deadline - time.monotonic())
            if event is not None and event.get("method") == method:
                return
        raise AssertionError(f"no {method} within {_TIMEOUT_S} s")

    def settle(self, seconds: float) -> None:
        """Let the page run for a while, keeping what it reports."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._collect(left)

    def html(self) -> str:
        root = self._browser.send("DOM.getDocument", {"depth": -1}, self._session)["root"]
        outer: str = self._browser.send("DOM.getOuterHTML", {"nodeId": root["nodeId"]},
                                        self._session)["outerHTML"]
        return outer

    def problems(self) -> list[str]:
        """Console messages, uncaught exceptions and browser log entries (a blocked script or
        style, a failed load): a clean page has none."""
        self.settle(0.2)
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                found.append(f"console.{params['type']}: "
                             + " ".join(str(a.get("value", a.get("description")))
                                        for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append("exception: " + details.get("exception", {}).get(
                    "description", details["text"]))
            elif method == "Log.entryAdded":
                entry = params["entry"]
                found.append(f"log {entry['level']} {entry['source']}: {entry['text']}")
        return found


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("chromium is not installed: run `apt-get install -y chromium` "
                    "(.ci/run installs it); the dashboard must be checked in a real browser")
    instance = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield instance
    finally:
        instance.close()


def drawn_charts(html: str) -> list[set[str]]:
    return [set(charts_of(section)) for section in sections(parse_html(html))]


def test_dashboard_draws_charts_refreshes_and_logs_nothing(browser: Browser) -> None:
    sources = Sources()
    app = make_app(sources.report, sources.alerts, sources.metrics, sources.health, None,
                   clock=lambda: NOW)
    with running(app) as url, browser.open(f"{url}/?refresh=1") as page:
        deadline = time.monotonic() + _TIMEOUT_S
        while len(sources.report_calls) < 3 and time.monotonic() < deadline:
            page.settle(0.25)
        html = page.html()
        problems = page.problems()
    assert len(sources.report_calls) >= 3, "the page did not refresh itself"
    assert drawn_charts(html) == [{"latency", "fingerprints", "headroom"}] * 3
    root = parse_html(html)
    main = root.iter("main")[0]
    assert main.attrs["data-generated"] != NOW.isoformat()  # a refreshed <main>, not the first
    assert root.iter("span")[0].all_text().startswith("updated ")
    assert problems == []


def test_dashboard_with_javascript_off_still_draws_every_chart(browser: Browser) -> None:
    sources = Sources()
    app = make_app(sources.report, sources.alerts, sources.metrics, sources.health, None)
    with running(app) as url, browser.open(f"{url}/", javascript=False) as page:
        page.settle(1.5)
        html = page.html()
        problems = page.problems()
    assert drawn_charts(html) == [{"latency", "fingerprints", "headroom"}] * 3
    assert "refreshes every 60 s" in parse_html(html).all_text()  # the script never ran
    assert problems == []


def test_dashboard_keeps_hostile_strings_inert_in_the_browser(browser: Browser) -> None:
    sources = Sources(hostile_document())
    app = make_app(sources.report, sources.alerts, sources.metrics, sources.health, None)
    with running(app) as url, browser.open(f"{url}/") as page:
        page.settle(0.5)
        html = page.html()
        problems = page.problems()
    root = parse_html(html)
    assert root.iter("title")[0].all_text() == "LLM API health"  # the payloads set document.title
    assert not root.iter("img")
    assert len(root.iter("script")) == 1
    assert SCRIPT in root.all_text()
    # An injected script or handler would also show here, as a policy violation.
    assert problems == []


@pytest.mark.parametrize("javascript", [True, False], ids=["script-on", "script-off"])
def test_html_report_file_opens_cleanly(browser: Browser, tmp_path: Path,
                                        javascript: bool) -> None:
    report = tmp_path / "report.html"
    report.write_text(render_html(hostile_document()))
    with browser.open(report.as_uri(), javascript=javascript) as page:
        html = page.html()
        problems = page.problems()
    assert drawn_charts(html) == [{"latency", "fingerprints", "headroom"}] * 3
    assert not parse_html(html).iter("img")
    assert problems == []


# --- done when: ten minutes of history at 2 s, every probe drawn --------------------------


def ten_minutes(target: str) -> list[ProbeResult]:
    """300 probes 2 s apart ending at NOW: the fingerprint changes at minute 5, latency steps
    up by 1.2 s at minute 7, and one probe in 50 gets a 503."""
    start = NOW - timedelta(minutes=10)
    results = []
    for i in range(300):
        at = start + timedelta(seconds=2 * i, microseconds=4321)
        common: dict[str, Any] = {
            "uid": uuid.uuid4().hex, "target_name": target, "config_hash": "0" * 64,
            "started_at": at, "stream": False, "request_url": "http://sim/v1/chat/completions",
            "request_payload": {"model": target, "messages": []}}
        if i % 50 == 25:
            results.append(ProbeResult(**common, ok=False, error_kind=ErrorKind.HTTP_SERVER_ERROR,
                                       http_status=503, error_detail="503", total_ms=30.0))
            continue
        total = 150.0 + (i % 7) * 5 + (1200.0 if i >= 210 else 0.0)
        results.append(ProbeResult(
            **common, ok=True, http_status=200, total_ms=total, time_to_headers_ms=total,
            openai_processing_ms=total * 0.8, model="gpt-4o-2024-08-06",
            system_fingerprint="fp_6ec83003ad" if i < 150 else "fp_b28b39ffa8",
            rate_limits=RateLimits(limit_requests=10_000, remaining_requests=10_000 - i),
            raw_response=b"{}", response_headers={}))
    return results


def test_ten_minutes_at_two_seconds_draws_every_probe_and_shows_both_changes(
        browser: Browser, engine: Engine, make_settings: MakeSettings) -> None:
    Recorder(engine).save_many([r for name in ("gpt-4o", "local") for r in ten_minutes(name)])
    with engine.connect() as connection:
        ids = {row.uid: row.id for row in connection.execute(select(ProbeRow.uid, ProbeRow.id))}
    settings = make_settings({"name": "gpt-4o"}, {"name": "local"})
    app = build_app(engine, None, lambda: settings, clock=lambda: NOW)
    with running(app) as url, browser.open(f"{url}/", javascript=False) as page:
        html = page.html()  # as Chromium parsed it
        problems = page.problems()
    assert problems == []
    found = sections(parse_html(html))
    assert [s.iter("h2")[0].all_text() for s in found] == ["gpt-4o", "local"]
    for section in found:
        drawn = charts_of(section)
        latency = [n for n in drawn["latency"].iter() if "probe" in n.classes()]
        # One point per probe, each linking to its own page.
        assert len(latency) == 300
        linked = {int(a.attrs["href"].removeprefix("probes/")) for a in
                  drawn["latency"].iter("a")}
        assert len(linked) == 300 and linked <= set(ids.values())
        assert len([n for n in latency if "failed" in n.classes()]) == 6
        # The latency step: every probe after it sits far above every probe before it.
        heights = [float(n.attrs["cy"]) for n in latency if "ok" in n.classes()]
        assert len(heights) == 294
        assert min(heights[:140]) - max(heights[-85:]) > 50
        # The fingerprint change: one run of each fingerprint (failed probes carry none),
        # meeting halfway across the axis.
        runs = [(g.attrs["fill"], g.iter("title")[0].all_text(), g.iter("rect"))
                for g in drawn["fingerprints"].iter("g") if "fingerprint" in g.classes()]
        assert sum(len(cells) for _, _, cells in runs) == 300
        named = [(fill, tip, cells) for fill, tip, cells in runs
                 if not tip.startswith("no fingerprint")]
        names = [tip.split(":")[0] for _, tip, _ in named]
        assert names[0] == "fp_6ec83003ad" and names[-1] == "fp_b28b39ffa8"
        assert names.index("fp_b28b39ffa8") == names.count("fp_6ec83003ad")
        assert named[0][0] != named[-1][0]
        change = float(next(cells for _, tip, cells in named
                            if tip.startswith("fp_b28b39ffa8"))[0].attrs["x"])
        middle = LEFT + (WIDTH - LEFT - RIGHT) / 2
        assert abs(change - middle) < 3
