"""Report documents as docs/report.md defines them, built by hand so the renderers and the web
server are tested against the contract rather than against whatever build_report returns today.

`hostile_document()` carries markup, formula and terminal-escape payloads in every field a
server or a model controls; a renderer that lets one through fails its test.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from wsgiref.types import WSGIApplication

from monitor.snapshot import LATENCY_BUCKETS_S, Histogram, MetricsSnapshot, TargetMetrics
from monitor.web.app import serve

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="document.title=1">'
FORMULA = '=HYPERLINK("http://evil.example/","x")'
ESCAPE = "\x1b[31mred\x1b[0m"


def _iso(moment: datetime) -> str:
    return moment.isoformat()


# docs/report.md: a series' fields, each a column (a list with one value per point).
BUCKET_FIELDS = ("t", "probes", "errors", "p50_ms", "p95_ms", "fingerprint", "headroom_requests",
                 "headroom_tokens")
PROBE_FIELDS = ("t", "probe_id", "ok", "error_kind", "http_status", "total_ms", "processing_ms",
                "fingerprint", "model", "headroom_requests", "headroom_tokens")


def columns(points: Sequence[dict[str, Any]], fields: Sequence[str]) -> dict[str, list[Any]]:
    """Points written one dict each, as the report's columns."""
    return {field: [p[field] for p in points] for field in fields}


def _series(since: datetime, hours: int, fingerprints: Sequence[str | None],
            slow_from: int | None = None) -> dict[str, Any]:
    """One point per hour; `fingerprints[i % len]` per bucket; slower from `slow_from` on."""
    points = []
    for hour in range(hours):
        slow = 2.0 if slow_from is not None and hour >= slow_from else 1.0
        gap = hour == 5  # a bucket with no probes: the charts must break their lines there
        points.append({
            "t": _iso(since + timedelta(hours=hour)),
            "probes": 0 if gap else 12,
            "errors": 1 if hour in (3, 17) else 0,
            "p50_ms": None if gap else round((400.0 + 10 * (hour % 4)) * slow, 1),
            "p95_ms": None if gap else round((780.0 + 25 * (hour % 3)) * slow, 1),
            "fingerprint": None if gap else fingerprints[hour % len(fingerprints)],
            "headroom_requests": None if gap else round(0.99 - hour * 0.01, 4),
            "headroom_tokens": None if gap else round(0.95 - hour * 0.03, 4),
        })
    return {"bucket": "hour", "columns": columns(points, BUCKET_FIELDS)}


def _heartbeat(now: datetime, count: int, first_id: int, fingerprint: str | None,
               model: str | None, *, failed: Sequence[int] = (),
               limited: Sequence[int] = ()) -> list[dict[str, Any]]:
    """`count` probes a minute apart up to `now`, newest last; some failed or rate limited."""
    beats = []
    for i in range(count):
        ok = i not in failed and i not in limited
        beats.append({
            "probe_id": first_id + i, "t": _iso(now - timedelta(minutes=count - i)), "ok": ok,
            "total_ms": 400.0 + 10 * (i % 7) if ok else 80.0,
            "http_status": 200 if ok else (429 if i in limited else 503),
            "error_kind": None if ok else ("rate_limited" if i in limited
                                           else "http_server_error"),
            "fingerprint": fingerprint if ok else None, "model": model if ok else None})
    return beats


def _plain_target(since: datetime) -> dict[str, Any]:
    return {
        "target": "gpt-4o",
        "probes": 288, "ok": 285, "success_rate": 0.9896,
        "errors": {"http_server_error": 2, "read_timeout": 1},
        "skipped": {"missed": 1, "rate_limited": 3},
        "latency_ms": {
            "total": {"p50": 412.0, "p95": 801.5, "p99": 1210.0},
            "headers": {"p50": 410.2, "p95": 799.0, "p99": 1201.3},
            "ttft": None,
            "processing": {"p50": 380.0, "p95": 760.0, "p99": 1150.0},
        },
        "output_tokens_per_s": None,
        "tokens": {"prompt": 4032, "completion": 288, "total": 4320},
        "fingerprints": [
            {"fingerprint": "fp_6ec83003ad", "count": 200, "share": 0.7018,
             "first_seen": _iso(since), "last_seen": _iso(NOW)},
            {"fingerprint": "fp_a1b2c3d4e5", "count": 85, "share": 0.2982,
             "first_seen": _iso(since + timedelta(hours=12)), "last_seen": _iso(NOW)},
        ],
        "models": [
            {"model": "gpt-4o-2024-08-06", "count": 285, "share": 1.0,
             "first_seen": _iso(since), "last_seen": _iso(NOW)},
        ],
        "rate_limits": {
            "limit_requests": 10000, "limit_tokens": 30000000,
            "remaining_requests": 9999, "remaining_tokens": 29999985,
            "headroom_requests": 0.9999, "headroom_tokens": 0.9999,
            "at": _iso(NOW - timedelta(minutes=1)),
        },
        "open_alerts": [
            {"id": 12, "kind": "latency", "key": "processing_ms", "severity": "warning",
             "opened_at": _iso(since + timedelta(hours=18)),
             "explanation": "processing_ms median rose from 380 ms to 760 ms"},
        ],
        "alerts": [
            {"id": 9, "kind": "fingerprint", "key": "new:fp_a1b2c3d4e5", "severity": "info",
             "state": "resolved", "opened_at": _iso(since + timedelta(hours=12)),
             "resolved_at": _iso(since + timedelta(hours=14)),
             "explanation": "a new system_fingerprint fp_a1b2c3d4e5 answered 3 probes"},
            {"id": 12, "kind": "latency", "key": "processing_ms", "severity": "warning",
             "state": "open", "opened_at": _iso(since + timedelta(hours=18)),
             "resolved_at": None,
             "explanation": "processing_ms median rose from 380 ms to 760 ms"},
        ],
        "last_error": {"at": _iso(since + timedelta(hours=17, minutes=5)),
                       "error_kind": "read_timeout", "http_status": None,
                       "detail": "Read timed out after 30000 ms"},
        "series": _series(since, 24, ["fp_6ec83003ad"] * 12 + ["fp_a1b2c3d4e5"] * 12,
                          slow_from=18),
        "uptime": {"24h": 0.9896, "7d": 0.9931, "30d": 0.9957},
        "heartbeat": _heartbeat(since + timedelta(hours=24), 60, 9001, "fp_a1b2c3d4e5",
                                "gpt-4o-2024-08-06", failed=[17, 58], limited=[40]),
        "state": {"summary": "watching", "warmups": [], "backoff_until": None,
                  "budget_spent": None, "maintenance_until": None},
    }


def _streaming_target(since: datetime) -> dict[str, Any]:
    target = _plain_target(since)
    target.update({
        "target": "gpt-4o-mini-stream",
        "probes": 24, "ok": 24, "success_rate": 1.0, "errors": {}, "skipped": {},
        "output_tokens_per_s": {"p50": 88.5, "p95": 61.0, "p99": 40.2},
        "fingerprints": [{"fingerprint": "fp_stream", "count": 24, "share": 1.0,
                          "first_seen": _iso(since), "last_seen": _iso(NOW)}],
        "open_alerts": [], "alerts": [], "last_error": None,
        "series": _series(since, 24, ["fp_stream"]),
        "uptime": {"24h": 1.0, "7d": 1.0, "30d": None},
        "heartbeat": _heartbeat(since + timedelta(hours=24), 12, 5001, "fp_stream",
                                "gpt-4o-mini-2024-07-18"),
        "state": {
            "summary": "learning fingerprint pool (24 of 30 probes)",
            "warmups": [{"baseline": "fingerprint pool", "detector": "fingerprint",
                         "seen": 24, "needed": 30}],
            "backoff_until": None, "budget_spent": None, "maintenance_until": None},
    })
    target["latency_ms"] = dict(target["latency_ms"],
                                ttft={"p50": 210.0, "p95": 390.0, "p99": 512.9})
    return target


def _idle_target() -> dict[str, Any]:
    """A target with no probes in the range: every measured value is null."""
    return {
        "target": "azure-east", "probes": 0, "ok": 0, "success_rate": None, "errors": {},
        "skipped": {"budget_spent": 288},
        "latency_ms": {"total": None, "headers": None, "ttft": None, "processing": None},
        "output_tokens_per_s": None,
        "tokens": {"prompt": 0, "completion": 0, "total": 0},
        "fingerprints": [], "models": [],
        "rate_limits": {"limit_requests": None, "limit_tokens": None,
                        "remaining_requests": None, "remaining_tokens": None,
                        "headroom_requests": None, "headroom_tokens": None, "at": None},
        "open_alerts": [], "alerts": [], "last_error": None,
        "series": {"bucket": "hour", "columns": columns([], BUCKET_FIELDS)},
        "uptime": {"24h": None, "7d": None, "30d": None},
        "heartbeat": [],
        "state": {
            "summary": "in maintenance until 14:00:00 UTC; waiting for its first probe",
            "warmups": [{"baseline": "availability", "detector": "availability",
                         "seen": 0, "needed": 10}],
            "backoff_until": None, "budget_spent": None,
            "maintenance_until": _iso(NOW + timedelta(hours=2))},
    }


def document(now: datetime = NOW) -> dict[str, Any]:
    """A realistic 24 h report of three targets: a plain one with a fingerprint change and two
    alerts, a streaming one, and one with no probes."""
    since = now - timedelta(hours=24)
    return {
        "version": 3, "generated_at": _iso(now), "since": _iso(since), "until": _iso(now),
        "targets": [_plain_target(since), _streaming_target(since), _idle_target()],
        "replays": [
            {"probe_id": 901, "replay_of": 17, "target": "gpt-4o",
             "t": _iso(now - timedelta(hours=2)), "ok": True, "error_kind": None,
             "http_status": 200, "model": "gpt-4o-2024-08-06",
             "fingerprint": "fp_a1b2c3d4e5", "total_ms": 398.0},
            {"probe_id": 902, "replay_of": 18, "target": "gpt-4o",
             "t": _iso(now - timedelta(hours=1)), "ok": False, "error_kind": "rate_limited",
             "http_status": 429, "model": None, "fingerprint": None, "total_ms": 12.5},
        ],
    }


def hostile_document(now: datetime = NOW) -> dict[str, Any]:
    """`document()` with every upstream string replaced by a payload."""
    doc = document(now)
    target = doc["targets"][0]
    since = datetime.fromisoformat(doc["since"])
    target["fingerprints"][1]["fingerprint"] = SCRIPT
    target["models"][0]["model"] = FORMULA
    target["errors"] = {IMG: 1, "read_timeout": 2}
    target["last_error"]["detail"] = f"{ESCAPE} {SCRIPT} {IMG}"
    target["last_error"]["error_kind"] = FORMULA
    for alert in target["alerts"] + target["open_alerts"]:
        alert["explanation"] = f'"quoted" & </title>{SCRIPT}{IMG}'
        alert["key"] = f"{SCRIPT}{ESCAPE}"
    target["series"] = _series(since, 24, ["fp_6ec83003ad", SCRIPT, IMG])
    doc["targets"][1]["target"] = f"{FORMULA}{IMG}"
    replay = doc["replays"][0]
    replay.update(target=f"{FORMULA}{IMG}", model=SCRIPT, fingerprint=f"{IMG}{ESCAPE}")
    doc["replays"][1]["error_kind"] = SCRIPT
    return doc


def probe_series(since: datetime, minutes: int = 10, interval_s: int = 2, *,
                 fingerprints: tuple[str, str] = ("fp_6ec83003ad", "fp_b28b39ffa8"),
                 first_id: int = 1) -> dict[str, Any]:
    """A probe series: one probe every `interval_s` for `minutes`; the fingerprint changes
    halfway, latency steps up by 1.2 s at 70 %, and every 50th probe fails with a 503."""
    count = minutes * 60 // interval_s
    points = []
    for i in range(count):
        ok = i % 50 != 49
        slow = 1200.0 if i >= count * 7 // 10 else 0.0
        points.append({
            "t": _iso(since + timedelta(seconds=i * interval_s, microseconds=1234)),
            "probe_id": first_id + i, "ok": ok,
            "error_kind": None if ok else "http_server_error",
            "http_status": 200 if ok else 503,
            "total_ms": round(150.0 + 7 * (i % 5) + slow, 1) if ok else 40.0,
            "processing_ms": round(120.0 + slow, 1) if ok else None,
            "fingerprint": (fingerprints[0] if i < count // 2 else fingerprints[1]) if ok
            else None,
            "model": "gpt-4o-2024-08-06" if ok else None,
            "headroom_requests": 0.9999 if ok else None,
            "headroom_tokens": round(0.999 - i / 1000, 4) if ok else None})
    return {"bucket": "probe", "columns": columns(points, PROBE_FIELDS)}


def probe_document(now: datetime = NOW, minutes: int = 10) -> dict[str, Any]:
    """A 24 h report of a new install: `minutes` of probes at 2 s intervals for two targets,
    with a fingerprint change and a 1.2 s latency step (probe_series), and one idle target."""
    doc = document(now)
    since = now - timedelta(minutes=minutes)
    plain, stream, idle = doc["targets"]
    plain["series"] = probe_series(since, minutes)
    stream["series"] = probe_series(since, minutes, fingerprints=("fp_stream", "fp_stream2"),
                                    first_id=100_001)
    plain["alerts"] = plain["open_alerts"] = []
    idle["series"] = {"bucket": "probe", "columns": columns([], PROBE_FIELDS)}
    return doc


def watch_state_document(now: datetime = NOW) -> dict[str, Any]:
    """`document()` with the fields other parts of the report add: a watch state in warm-up
    (docs/report.md `state`) and skipped slots, hostile strings included."""
    doc = document(now)
    plain, stream, _ = doc["targets"]
    plain["state"] = {
        "summary": "learning fingerprint pool (12 of 30 probes)",
        "warmups": [{"baseline": "fingerprint pool", "detector": "fingerprint", "seen": 12,
                     "needed": 30},
                    {"baseline": f"latency {SCRIPT}", "detector": "latency", "seen": 12,
                     "needed": 60}],
        "backoff_until": None, "budget_spent": None, "maintenance_until": None}
    plain["skipped"] = {"rate_limited": 26, "maintenance": 0}
    stream["state"] = {"summary": f"backing off after 429 until 12:04:10 {IMG}", "warmups": [],
                       "backoff_until": _iso(now + timedelta(minutes=4)),
                       "budget_spent": None, "maintenance_until": None}
    stream["heartbeat"][-1]["fingerprint"] = SCRIPT
    stream["heartbeat"][-1]["model"] = IMG
    return doc


def histogram(values_s: list[float]) -> Histogram:
    cumulative = tuple(sum(1 for v in values_s if v <= bound) for bound in LATENCY_BUCKETS_S)
    return Histogram(LATENCY_BUCKETS_S, cumulative, len(values_s), sum(values_s))


def metrics() -> MetricsSnapshot:
    """What metrics_snapshot would read for two targets, one of them with hostile labels, and
    a webhook that failed twice."""
    return MetricsSnapshot([
        TargetMetrics(
            target="gpt-4o",
            latency={"total": histogram([0.3, 0.4, 0.45, 0.9, 1.2]),
                     "processing": histogram([0.2, 0.35, 0.4, 0.8, 1.1])},
            outcomes={"ok": 285, "http_server_error": 2, "read_timeout": 1},
            fingerprint="fp_6ec83003ad", model="gpt-4o-2024-08-06",
            limit_requests=10000, limit_tokens=30000000,
            remaining_requests=9999, remaining_tokens=29999985,
            open_alerts={("latency", "warning"): 1, ("availability", "critical"): 0},
            skipped_slots={"budget_spent": 0, "missed": 1, "rate_limited": 3},
            last_probe_timestamp_s=NOW.timestamp(), last_probe_ok=True,
        ),
        TargetMetrics(
            target="local", latency={}, outcomes={"ok": 3}, fingerprint=SCRIPT,
            model='quote"back\\slash\nnewline', limit_requests=None, limit_tokens=None,
            remaining_requests=None, remaining_tokens=None,
            open_alerts={("latency", "warning"): 0, ("availability", "critical"): 0},
            skipped_slots={"budget_spent": 0, "missed": 0, "rate_limited": 0},
            last_probe_timestamp_s=(NOW - timedelta(minutes=7)).timestamp(),
            last_probe_ok=False,
        ),
    ], notifications_failed={"log": 0, "webhook:0123456789abcdef": 2})


class Sources:
    """Stand-ins for build_report, list_alerts, metrics_snapshot and the health check that
    record how the web app called them."""

    def __init__(self, doc: dict[str, Any] | None = None) -> None:
        self.doc = doc if doc is not None else document()
        self.report_calls: list[tuple[datetime, datetime, list[str] | None]] = []
        self.alerts_calls: list[bool] = []
        self.healthy = True

    def report(self, since: datetime, until: datetime,
               targets: list[str] | None) -> dict[str, Any]:
        self.report_calls.append((since, until, targets))
        # Each answer is newer than the last, so a test can tell a refreshed page.
        generated = NOW + timedelta(seconds=len(self.report_calls))
        return dict(self.doc, generated_at=generated.isoformat())

    def alerts(self, open_only: bool) -> list[dict[str, Any]]:
        self.alerts_calls.append(open_only)
        return [dict(a, target=t["target"], state="open")
                for t in self.doc["targets"] for a in t["open_alerts"]]

    def metrics(self) -> list[TargetMetrics]:
        return metrics()

    def health(self) -> tuple[bool, dict[str, Any]]:
        if self.healthy:
            return True, {"database": "ok", "scheduler": "ok"}
        return False, {"database": "unreachable: connection refused", "scheduler": "ok"}


@contextmanager
def running(app: WSGIApplication) -> Iterator[str]:
    """`monitor.web.app.serve` on a free loopback port in a thread; yields its URL."""
    stop = threading.Event()
    lines: queue.Queue[str] = queue.Queue()
    thread = threading.Thread(target=serve, args=("127.0.0.1", 0, app, lines.put),
                              kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        line = lines.get(timeout=10)
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield line.removeprefix("listening on ")
    finally:
        stop.set()
        thread.join(10)


# --- reading HTML back ----------------------------------------------------------------------

VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: str = ""

    def iter(self, tag: str | None = None) -> list[Node]:
        found = [self] if tag in (None, self.tag) else []
        for child in self.children:
            found += child.iter(tag)
        return found

    def all_text(self) -> str:
        return self.text + "".join(child.all_text() for child in self.children)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(Node("#text", {}, text=data))


def parse_html(text: str) -> Node:
    """The document as a tree; fails on a misnested tag, which escaping bugs cause."""
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    assert builder.stack == [builder.root], [n.tag for n in builder.stack]
    return builder.root


def sections(root: Node) -> list[Node]:
    return [n for n in root.iter("section") if "target" in n.classes()]


def charts_of(section: Node) -> dict[str, Node]:
    return {next(c for c in svg.classes() if c != "chart"): svg for svg in section.iter("svg")
            if "chart" in svg.classes()}
