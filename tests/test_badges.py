"""`/badges/{target}/{kind}.svg` over real HTTP on loopback: each kind's value and colour,
404s, the token, and upstream strings kept inert."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import quote

import pytest
from report_fixtures import IMG, NOW, SCRIPT, Node, Sources, document, parse_html, running
from test_web import TOKEN, get

from monitor.render.badges import BAD, FAIR, GOOD, INFO, UNKNOWN
from monitor.web.app import make_app


@pytest.fixture
def sources() -> Sources:
    doc = document()
    doc["targets"][1]["target"] = "gpt-4o-mini-stream é"
    return Sources(doc)


@pytest.fixture
def server(sources: Sources) -> Iterator[str]:
    app = make_app(sources.report, sources.alerts, sources.metrics, sources.health, None,
                   clock=lambda: NOW)
    with running(app) as url:
        yield url


def badge(url: str, path: str, headers: dict[str, str] | None = None) -> Node:
    answer = get(url, path, headers)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "image/svg+xml; charset=utf-8"
    assert answer.headers["content-security-policy"] == "default-src 'none'"
    return parse_html(answer.body.decode())


def value(svg: Node) -> tuple[str, str]:
    """The badge's message and its colour."""
    texts = [t.all_text() for t in svg.iter("text")]
    return texts[1], svg.iter("rect")[1].attrs["fill"]


@pytest.mark.parametrize(("kind", "message", "colour"), [
    pytest.param("uptime-24h", "98.96%", FAIR, id="uptime-24h"),
    pytest.param("uptime-7d", "99.31%", GOOD, id="uptime-7d"),
    pytest.param("uptime-30d", "99.57%", GOOD, id="uptime-30d"),
    pytest.param("latency-p95", "802 ms", INFO, id="latency-p95"),
    pytest.param("fingerprint", "fp_a1b2c3d4e5", INFO, id="fingerprint"),
    pytest.param("model", "gpt-4o-2024-08-06", INFO, id="model"),
])
def test_each_badge_shows_its_value_of_the_last_24_hours(
        server: str, sources: Sources, kind: str, message: str, colour: str) -> None:
    svg = badge(server, f"/badges/gpt-4o/{kind}.svg")
    assert value(svg) == (message, colour)
    assert svg.iter("title")[0].all_text().startswith("gpt-4o: ")
    assert sources.report_calls == [(NOW - timedelta(hours=24), NOW, ["gpt-4o"])]


def test_badges_of_a_target_without_data_say_so(server: str) -> None:
    assert value(badge(server, "/badges/azure-east/uptime-24h.svg")) == ("no data", UNKNOWN)
    assert value(badge(server, "/badges/azure-east/model.svg")) == ("none", UNKNOWN)
    assert value(badge(server, "/badges/azure-east/latency-p95.svg")) == ("no data", UNKNOWN)


def test_a_target_name_in_utf8_finds_its_badge(server: str) -> None:
    svg = badge(server, "/badges/" + quote("gpt-4o-mini-stream é") + "/uptime-30d.svg")
    assert value(svg) == ("no data", UNKNOWN)
    assert svg.iter("title")[0].all_text().startswith("gpt-4o-mini-stream é: uptime 30d")


def test_low_uptime_is_red(sources: Sources, server: str) -> None:
    sources.doc["targets"][0]["uptime"]["24h"] = 0.9
    assert value(badge(server, "/badges/gpt-4o/uptime-24h.svg"))[1] == BAD


@pytest.mark.parametrize("path", [
    "/badges/gpt-4o/uptime-1y.svg", "/badges/gpt-4o/uptime-24h.png", "/badges/gpt-4o",
    "/badges//model.svg", "/badges/nobody/model.svg"])
def test_unknown_badges_are_not_found(server: str, path: str) -> None:
    answer = get(server, path)
    assert answer.status == 404
    assert "error" in answer.json()


def test_a_badge_takes_no_parameters(server: str) -> None:
    answer = get(server, "/badges/gpt-4o/model.svg?style=flat")
    assert answer.status == 400
    assert answer.json()["error"] == "unknown parameter 'style'; this route takes none"


def test_badges_want_the_token_like_every_route_but_healthz(sources: Sources) -> None:
    app = make_app(sources.report, sources.alerts, sources.metrics, sources.health, TOKEN,
                   clock=lambda: NOW)
    with running(app) as url:
        assert get(url, "/badges/gpt-4o/model.svg").status == 401
        svg = badge(url, "/badges/gpt-4o/model.svg", {"Authorization": f"Bearer {TOKEN}"})
    assert value(svg)[0] == "gpt-4o-2024-08-06"


def test_upstream_strings_in_badges_are_inert(sources: Sources, server: str) -> None:
    beats = sources.doc["targets"][0]["heartbeat"]
    beats[-1]["fingerprint"], beats[-1]["model"] = SCRIPT, IMG
    fingerprint = badge(server, "/badges/gpt-4o/fingerprint.svg")
    model = badge(server, "/badges/gpt-4o/model.svg")
    assert value(fingerprint)[0] == SCRIPT and value(model)[0] == IMG
    for svg in (fingerprint, model):
        assert not svg.iter("script") and not svg.iter("img")


def test_a_long_value_is_cut_to_keep_the_badge_small(sources: Sources, server: str) -> None:
    sources.doc["targets"][0]["heartbeat"][-1]["model"] = "m" * 300
    svg = badge(server, "/badges/gpt-4o/model.svg")
    assert value(svg)[0] == "m" * 39 + "\u2026"
    assert int(svg.iter("svg")[0].attrs["width"]) < 400
