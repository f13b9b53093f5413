"""monitor.web.app over real HTTP on loopback: routes, parameters, /metrics, /healthz, the token,
and the Grafana dashboard checked against what /metrics really exposes."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families
from report_fixtures import (
    IMG,
    NOW,
    SCRIPT,
    Sources,
    charts_of,
    document,
    hostile_document,
    parse_html,
    running,
    sections,
)

from monitor.errors import MonitorError, StoreUnavailable
from monitor.render.dashboard import POLICY
from monitor.render.dashboard import SCRIPT as DASHBOARD_SCRIPT
from monitor.web.app import DEFAULT_HOST, WebServer, make_app

TOKEN = "tok-" "9d1c5e7a3b"
GRAFANA = Path(__file__).resolve().parents[1] / "contrib" / "grafana-dashboard.json"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json; charset=utf-8"
        return json.loads(self.body)


def get(url: str, path: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> Answer:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      response.read())
    finally:
        connection.close()


@pytest.fixture
def sources() -> Sources:
    return Sources()


@pytest.fixture
def server(sources: Sources) -> Iterator[str]:
    app = make_app(sources.report, sources.alerts, sources.metrics, sources.health, None,
                   clock=lambda: NOW)
    with running(app) as url:
        yield url


@pytest.fixture
def locked(sources: Sources) -> Iterator[str]:
    app = make_app(sources.report, sources.alerts, sources.metrics, sources.health, TOKEN,
                   clock=lambda: NOW)
    with running(app) as url:
        yield url


# --- /api/report ----------------------------------------------------------------------------


def test_report_defaults_to_the_last_24_hours_of_every_target(server: str,
                                                              sources: Sources) -> None:
    answer = get(server, "/api/report")
    assert answer.status == 200
    doc = answer.json()
    assert doc["version"] == 3 and [t["target"] for t in doc["targets"]] == [
        "gpt-4o", "gpt-4o-mini-stream", "azure-east"]
    assert sources.report_calls == [(NOW - timedelta(hours=24), NOW, None)]
    assert answer.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(("query", "since", "until", "targets"), [
    pytest.param("since=7d", NOW - timedelta(days=7), NOW, None, id="duration"),
    pytest.param("since=2026-11-01&until=2026-11-02", datetime(2026, 11, 1, tzinfo=UTC),
                 datetime(2026, 11, 2, tzinfo=UTC), None, id="dates"),
    pytest.param("since=2026-11-26T09:00:00%2B01:00&until=1h",
                 datetime(2026, 11, 26, 8, tzinfo=UTC), NOW - timedelta(hours=1), None,
                 id="iso-with-offset"),
    pytest.param("target=a&target=b%20c", NOW - timedelta(hours=24), NOW, ["a", "b c"],
                 id="targets"),
])
def test_report_takes_range_and_targets(server: str, sources: Sources, query: str,
                                        since: datetime, until: datetime,
                                        targets: list[str] | None) -> None:
    assert get(server, f"/api/report?{query}").status == 200
    assert sources.report_calls == [(since, until, targets)]


@pytest.mark.parametrize(("query", "message"), [
    pytest.param("since=yesterday", "since: expected a duration back from now like \"24h\"",
                 id="bad-since"),
    pytest.param("until=soon", "until: expected a duration", id="bad-until"),
    pytest.param("since=1h&until=2h", "must be before until", id="backwards"),
    pytest.param("since=1h&since=2h", "since: expected one value, got 2", id="twice"),
    pytest.param("target=", "target: expected a target name", id="empty-target"),
    pytest.param("sinse=1h", "unknown parameter 'sinse'", id="typo"),
])
def test_report_rejects_bad_parameters_with_400(server: str, sources: Sources, query: str,
                                                message: str) -> None:
    answer = get(server, f"/api/report?{query}")
    assert answer.status == 400
    assert message in answer.json()["error"]
    assert sources.report_calls == []


def test_a_store_error_is_a_503_and_the_server_keeps_serving(sources: Sources) -> None:
    def down(since: datetime, until: datetime, targets: list[str] | None) -> dict[str, Any]:
        raise StoreUnavailable("database postgresql://db/monitor is unreachable")

    app = make_app(down, sources.alerts, sources.metrics, sources.health, None)
    with running(app) as url:
        answer = get(url, "/api/report")
        assert answer.status == 503
        assert answer.json() == {"error": "database postgresql://db/monitor is unreachable"}
        assert get(url, "/healthz").status == 200


# --- /api/alerts ----------------------------------------------------------------------------


def test_alerts_lists_all_or_only_open_ones(server: str, sources: Sources) -> None:
    answer = get(server, "/api/alerts?open=1")
    assert answer.status == 200
    assert [(a["id"], a["target"]) for a in answer.json()] == [(12, "gpt-4o")]
    assert get(server, "/api/alerts").status == 200
    assert get(server, "/api/alerts?open=false").status == 200
    assert sources.alerts_calls == [True, False, False]
    bad = get(server, "/api/alerts?open=maybe")
    assert bad.status == 400 and bad.json() == {"error": "open: expected 1 or 0, got 'maybe'"}


# --- /metrics -------------------------------------------------------------------------------


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    answer = get(url, "/metrics", headers)
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return {f.name: f for f in text_string_to_metric_families(answer.body.decode())}


def samples(family: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def test_metrics_expose_latency_histograms_by_target_and_phase(server: str) -> None:
    family = scrape(server)["monitor_probe_latency_seconds"]
    assert family.type == "histogram"
    values = samples(family)

    def bucket(phase: str, le: str) -> float:
        return values[("monitor_probe_latency_seconds_bucket",
                       (("le", le), ("phase", phase), ("target", "gpt-4o")))]

    # total: 0.3, 0.4, 0.45, 0.9, 1.2 seconds
    assert bucket("total", "0.25") == 0 and bucket("total", "0.5") == 3
    assert bucket("total", "1.0") == 4 and bucket("total", "+Inf") == 5
    assert values[("monitor_probe_latency_seconds_count",
                   (("phase", "total"), ("target", "gpt-4o")))] == 5
    assert values[("monitor_probe_latency_seconds_sum",
                   (("phase", "total"), ("target", "gpt-4o")))] == pytest.approx(3.25)
    phases = {dict(labels)["phase"] for _, labels in values}
    assert phases == {"total", "processing"}  # never-measured phases are absent


def test_metrics_count_probes_by_outcome(server: str) -> None:
    values = samples(scrape(server)["monitor_probes"])
    assert values == {
        ("monitor_probes_total", (("outcome", "ok"), ("target", "gpt-4o"))): 285,
        ("monitor_probes_total", (("outcome", "http_server_error"), ("target", "gpt-4o"))): 2,
        ("monitor_probes_total", (("outcome", "read_timeout"), ("target", "gpt-4o"))): 1,
        ("monitor_probes_total", (("outcome", "ok"), ("target", "local"))): 3,
    }


def test_metrics_carry_fingerprint_and_model_as_info_labels_escaped(server: str) -> None:
    family = scrape(server)["monitor_target_info"]  # the text format has no info type
    assert {(s.name, s.value) for s in family.samples} == {("monitor_target_info", 1)}
    labels = [s.labels for s in family.samples]
    assert {"target": "gpt-4o", "fingerprint": "fp_6ec83003ad",
            "model": "gpt-4o-2024-08-06"} in labels
    # Quotes, backslashes and newlines survive the exposition format's escaping.
    assert {"target": "local", "fingerprint": SCRIPT,
            "model": 'quote"back\\slash\nnewline'} in labels


def test_metrics_show_rate_limits_and_open_alerts(server: str) -> None:
    families = scrape(server)
    assert samples(families["monitor_ratelimit_limit"]) == {
        ("monitor_ratelimit_limit", (("kind", "requests"), ("target", "gpt-4o"))): 10000,
        ("monitor_ratelimit_limit", (("kind", "tokens"), ("target", "gpt-4o"))): 30000000,
    }
    assert samples(families["monitor_ratelimit_remaining"])[
        ("monitor_ratelimit_remaining", (("kind", "tokens"), ("target", "gpt-4o")))] == 29999985
    alerts = samples(families["monitor_open_alerts"])
    assert alerts == {
        ("monitor_open_alerts", (("kind", kind), ("severity", severity), ("target", target))):
            count
        for (target, kind, severity), count in {
            ("gpt-4o", "latency", "warning"): 1, ("gpt-4o", "availability", "critical"): 0,
            ("local", "latency", "warning"): 0, ("local", "availability", "critical"): 0,
        }.items()}


def test_metrics_show_the_newest_probe_for_staleness_alerts(server: str) -> None:
    families = scrape(server)
    assert samples(families["monitor_last_probe_timestamp_seconds"]) == {
        ("monitor_last_probe_timestamp_seconds", (("target", "gpt-4o"),)): NOW.timestamp(),
        ("monitor_last_probe_timestamp_seconds", (("target", "local"),)):
            NOW.timestamp() - 420}
    assert samples(families["monitor_last_probe_success"]) == {
        ("monitor_last_probe_success", (("target", "gpt-4o"),)): 1,
        ("monitor_last_probe_success", (("target", "local"),)): 0}


def test_metrics_count_failed_notification_deliveries_by_channel(server: str) -> None:
    family = scrape(server)["monitor_notifications_failed"]
    assert family.type == "counter"
    assert samples(family) == {
        ("monitor_notifications_failed_total", (("channel", "log"),)): 0,
        ("monitor_notifications_failed_total", (("channel", "webhook:0123456789abcdef"),)): 2}


def test_metrics_count_skipped_slots_by_reason(server: str) -> None:
    values = samples(scrape(server)["monitor_slots_skipped"])
    assert values[("monitor_slots_skipped_total",
                   (("reason", "rate_limited"), ("target", "gpt-4o")))] == 3
    assert values[("monitor_slots_skipped_total",
                   (("reason", "budget_spent"), ("target", "local")))] == 0
    assert len(values) == 6  # every reason of every target, zeros included


def test_metrics_speak_openmetrics_when_asked(server: str) -> None:
    answer = get(server, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.body.endswith(b"# EOF\n")


def test_metrics_read_the_store_at_every_scrape(sources: Sources) -> None:
    reads = []

    def counting() -> list[Any]:
        reads.append(1)
        return sources.metrics()

    app = make_app(sources.report, sources.alerts, counting, sources.health, None)
    assert reads == []  # building the app reads nothing
    with running(app) as url:
        scrape(url)
        scrape(url)
    assert len(reads) == 2


# --- /healthz -------------------------------------------------------------------------------


def test_healthz_is_200_when_healthy_and_503_with_reasons_otherwise(server: str,
                                                                   sources: Sources) -> None:
    answer = get(server, "/healthz")
    assert answer.status == 200
    assert answer.json() == {"ok": True, "reasons": {"database": "ok", "scheduler": "ok"}}
    sources.healthy = False
    answer = get(server, "/healthz")
    assert answer.status == 503
    assert answer.json() == {"ok": False, "reasons": {
        "database": "unreachable: connection refused", "scheduler": "ok"}}


# --- the token ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/api/report", "/api/alerts?open=1", "/metrics"])
def test_token_is_required_on_every_route_but_healthz(locked: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        answer = get(locked, path, headers)
        assert answer.status == 401, headers
        assert answer.headers["www-authenticate"] == 'Bearer realm="monitor"'
    assert get(locked, path, {"Authorization": f"Bearer {TOKEN}"}).status == 200
    assert get(locked, path, {"Authorization": f"bearer  {TOKEN}"}).status == 200


def test_healthz_needs_no_token(locked: str) -> None:
    assert get(locked, "/healthz").status == 200


def test_token_never_appears_in_answers_or_logs(locked: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bodies = [get(locked, path, headers).body
              for path in ("/", "/api/report", "/metrics", "/healthz", "/nope")
              for headers in ({}, {"Authorization": f"Bearer {TOKEN}"},
                              {"Authorization": f"Bearer {TOKEN}x"})]
    assert all(TOKEN.encode() not in body for body in bodies)
    assert "GET /api/report" in caplog.text  # access lines are logged...
    assert TOKEN not in caplog.text  # ...without the credentials


def test_an_empty_token_is_refused(sources: Sources) -> None:
    with pytest.raises(ValueError, match="empty token"):
        make_app(sources.report, sources.alerts, sources.metrics, sources.health, " ")


# --- the dashboard --------------------------------------------------------------------------


def test_dashboard_has_the_report_charts_and_open_alerts(server: str) -> None:
    answer = get(server, "/?since=7d&target=gpt-4o")
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    root = parse_html(answer.body.decode())
    for section in sections(root):
        assert set(charts_of(section)) == {"latency", "fingerprints", "headroom"}
    main = root.iter("main")[0]
    assert main.attrs["data-refresh-s"] == "60"
    assert "processing_ms median rose" in main.iter("table")[0].all_text()
    links = [a.attrs["href"] for a in root.iter("nav")[0].iter("a")]
    assert "?since=24h&target=gpt-4o&refresh=60" in links
    assert root.iter("nav")[0].iter("b")[0].all_text() == "7d"


def test_dashboard_policy_admits_only_its_own_script_and_style(server: str) -> None:
    answer = get(server, "/")
    assert answer.headers["content-security-policy"] == POLICY
    root = parse_html(answer.body.decode())
    scripts = root.iter("script")
    assert len(scripts) == 1 and scripts[0].all_text() == DASHBOARD_SCRIPT
    digest = base64.b64encode(hashlib.sha256(DASHBOARD_SCRIPT.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in POLICY
    assert "innerHTML" not in DASHBOARD_SCRIPT and "eval" not in DASHBOARD_SCRIPT
    refresh = root.iter("noscript")[0]
    assert "http-equiv" in refresh.iter("meta")[0].attrs


def test_dashboard_renders_hostile_strings_inert(sources: Sources) -> None:
    hostile = Sources(hostile_document())
    app = make_app(hostile.report, hostile.alerts, sources.metrics, sources.health, None)
    with running(app) as url:
        root = parse_html(get(url, "/").body.decode())
    assert len(root.iter("script")) == 1 and not root.iter("img")
    assert not [n for n in root.iter() if any(k.startswith("on") for k in n.attrs)]
    assert SCRIPT in root.all_text() and IMG in root.all_text()


@pytest.mark.parametrize("query", ["refresh=0", "refresh=soon", "since=x", "foo=1"])
def test_dashboard_rejects_bad_parameters(server: str, query: str) -> None:
    assert get(server, f"/?{query}").status == 400


# --- everything else ------------------------------------------------------------------------


def test_unknown_paths_and_methods(server: str) -> None:
    assert get(server, "/nope").status == 404
    answer = get(server, "/api/report", method="POST")
    assert answer.status == 405 and answer.headers["allow"] == "GET, HEAD"
    head = get(server, "/api/report", method="HEAD")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0


def test_serve_says_where_it_listens_and_binds_loopback_by_default(sources: Sources) -> None:
    assert DEFAULT_HOST == "127.0.0.1"
    app = make_app(sources.report, sources.alerts, sources.metrics, sources.health, None)
    with running(app) as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert get(url, "/healthz").status == 200


def test_web_server_reports_a_port_in_use(sources: Sources) -> None:
    app = make_app(sources.report, sources.alerts, sources.metrics, sources.health, None)
    with WebServer(app) as first:
        port = int(first.url.rsplit(":", 1)[1])
        with pytest.raises(MonitorError, match=f"cannot listen on 127.0.0.1:{port}"):
            WebServer(app, port=port).start()


# --- the Grafana dashboard ------------------------------------------------------------------


def grafana_exprs(node: Any) -> list[str]:
    """Every PromQL expression in the dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in ("expr", "definition") and v]
        if isinstance(node.get("query"), str) and node.get("type") == "query":
            found.append(node["query"])
        return found + [e for v in node.values() for e in grafana_exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in grafana_exprs(v)]
    return []


def test_grafana_dashboard_uses_only_metrics_that_metrics_exposes(server: str) -> None:
    answer = get(server, "/metrics")
    exposed = {s.name for f in text_string_to_metric_families(answer.body.decode())
               for s in f.samples}
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["schemaVersion"] >= 39
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    exprs = grafana_exprs(dashboard)
    assert len(exprs) >= 8
    used = {name for e in exprs for name in re.findall(r"\bmonitor_[a-z_]+\b", e)}
    assert used and used <= exposed, used - exposed
    assert {"monitor_probe_latency_seconds_bucket", "monitor_probes_total",
            "monitor_ratelimit_remaining", "monitor_ratelimit_limit", "monitor_open_alerts",
            "monitor_target_info", "monitor_last_probe_timestamp_seconds",
            "monitor_last_probe_success", "monitor_notifications_failed_total"} <= used
    assert any("sum by (kind)" in e for e in exprs)  # open alerts by kind
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"])


def test_fixture_document_follows_the_contract() -> None:
    doc = document()
    assert set(doc) == {"version", "generated_at", "since", "until", "targets", "replays"}
    assert set(doc["targets"][0]) == {
        "target", "probes", "ok", "success_rate", "errors", "skipped", "latency_ms",
        "output_tokens_per_s", "tokens", "fingerprints", "models", "rate_limits",
        "open_alerts", "alerts", "last_error", "series", "uptime", "heartbeat", "state"}
    assert set(doc["replays"][0]) == {
        "probe_id", "replay_of", "target", "t", "ok", "error_kind", "http_status", "model",
        "fingerprint", "total_ms"}
