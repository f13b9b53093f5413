"""The dashboard's status overview and its probe-level charts, against fixture documents
(tests/report_fixtures.py), read back with html.parser."""

from __future__ import annotations

import itertools
import re

from report_fixtures import (
    IMG,
    SCRIPT,
    Node,
    charts_of,
    document,
    parse_html,
    probe_document,
    sections,
    watch_state_document,
)

from monitor.render import render_dashboard, render_html
from monitor.render.charts import LEFT, RIGHT, TOP, WIDTH
from monitor.render.dashboard import CHARTS_UP_TO


def dashboard(doc: dict, targets: list[str] | None = None) -> Node:
    alerts = [dict(a, target=t["target"]) for t in doc["targets"] for a in t["open_alerts"]]
    return parse_html(render_dashboard(doc, alerts, since="24h", targets=targets,
                                       refresh_s=60))


def markers(svg: Node) -> list[Node]:
    return [n for n in svg.iter() if "probe" in n.classes()]


def vertices(path: Node) -> list[tuple[float, float]]:
    numbers = [float(v) for v in re.findall(r"-?\d+\.?\d*", path.attrs["d"])]
    return list(zip(numbers[::2], numbers[1::2], strict=True))


# --- charts of every probe ------------------------------------------------------------------


def test_every_probe_is_a_point_on_each_chart_across_the_whole_width() -> None:
    doc = probe_document()
    plain = sections(dashboard(doc))[0]
    times = doc["targets"][0]["series"]["columns"]["t"]
    drawn = charts_of(plain)
    latency = markers(drawn["latency"])
    assert len(latency) == len(times) == 300
    assert len([m for m in latency if "failed" in m.classes()]) == 6
    # Ten minutes of a 24 h range fill the axis, not its last pixel.
    xs = [float(m.attrs.get("cx", 0)) or float(m.attrs["x"]) + 1 for m in latency]
    assert xs[0] == LEFT and xs[-1] > WIDTH - RIGHT - 5
    assert all(b > a for a, b in itertools.pairwise(xs))
    assert len(markers(drawn["fingerprints"])) == 300
    headroom = [p for p in drawn["headroom"].iter("path")
                if "headroom_tokens" in p.classes()]
    assert sum(len(vertices(p)) for p in headroom) == 294  # every successful probe


def test_a_latency_step_and_a_fingerprint_change_show_where_they_happen() -> None:
    doc = probe_document()
    drawn = charts_of(sections(dashboard(doc))[0])
    ok = [m for m in markers(drawn["latency"]) if "ok" in m.classes()]
    heights = [float(m.attrs["cy"]) for m in ok]
    before, after = heights[:150], heights[-60:]
    assert min(before) - max(after) > 60  # 1.2 s slower is far up the chart
    assert ": 1,371 ms, ok" in ok[-1].iter("title")[0].all_text()
    runs = [g for g in drawn["fingerprints"].iter("g") if "fingerprint" in g.classes()]
    named = [r for r in runs if not r.iter("title")[0].all_text().startswith("no fingerprint")]
    assert next(r.iter("title")[0].all_text().split(":")[0] for r in named) == "fp_6ec83003ad"
    assert named[-1].iter("title")[0].all_text().startswith("fp_b28b39ffa8: ")
    assert named[0].attrs["fill"] != named[-1].attrs["fill"]
    # The stripe starts at the first probe, not at the start of the range.
    first = min(float(r.attrs["x"]) for r in markers(drawn["fingerprints"]))
    assert first == LEFT


def test_probe_markers_say_what_happened_and_link_to_the_probe() -> None:
    doc = probe_document()
    latency = charts_of(sections(dashboard(doc))[0])["latency"]
    links = latency.iter("a")
    assert len(links) == 300 and links[0].attrs["href"] == "probes/1"
    failed = next(m for m in markers(latency) if "failed" in m.classes())
    assert failed.iter("title")[0].all_text() == (
        "2026-11-26 11:51:38 UTC: 40 ms, failed: http_server_error (HTTP 503), "
        "fingerprint - (probe 50)")
    # A report file has no probe pages to link to.
    assert not charts_of(sections(parse_html(render_html(doc)))[0])["latency"].iter("a")


def test_headroom_lines_stay_clear_of_the_frame() -> None:
    headroom = charts_of(sections(dashboard(probe_document()))[0])["headroom"]
    full = [p for p in headroom.iter("path") if "headroom_requests" in p.classes()]
    ys = {y for p in full for _, y in vertices(p)}
    assert len(ys) == 1 and TOP < ys.pop() < 98 - 1


def test_upstream_strings_in_probe_points_are_escaped() -> None:
    doc = probe_document()
    series = doc["targets"][0]["series"]["columns"]
    series["fingerprint"][:5] = [SCRIPT] * 5
    series["model"][4] = IMG
    root = dashboard(doc)
    assert len(root.iter("script")) == 1 and not root.iter("img")
    assert any(SCRIPT in t.all_text() for t in root.iter("title"))


# --- the overview ---------------------------------------------------------------------------


def overview_rows(root: Node) -> list[Node]:
    return [r for r in root.iter("tr") if "status" in r.classes()]


def test_overview_comes_after_open_alerts_and_before_the_charts() -> None:
    root = dashboard(document())
    main = root.iter("main")[0]
    order = [n.tag if n.tag != "section" else min(n.classes()) for n in main.children
             if n.tag in ("h3", "section", "table")]
    assert order[:3] == ["h3", "table", "overview"] and order[3:] == ["target"] * 3
    rows = overview_rows(root)
    assert [r.iter("a")[0].all_text() for r in rows] == [
        "gpt-4o", "gpt-4o-mini-stream", "azure-east"]
    assert rows[0].iter("a")[0].attrs["href"] == "?since=24h&target=gpt-4o&refresh=60"
    cells = [td.all_text() for td in rows[0].iter("td")]
    assert cells[2:5] == ["98.96%", "99.31%", "99.57%"]
    assert cells[5] == "802" and "gpt-4o-2024-08-06" in cells[6] and "fp_a1b2c3d4e5" in cells[6]
    # azure-east has no probes in the range: numbers are "-", its state line says why.
    cells = [td.all_text() for td in rows[2].iter("td")][2:]
    assert cells[:5] == ["-"] * 5
    assert cells[5].startswith("in maintenance until 14:00:00 UTC; waiting for its first probe")
    assert cells[5].endswith("skipped: budget_spent 288")


def test_heartbeat_bar_colours_each_recent_probe_and_links_it() -> None:
    rows = overview_rows(dashboard(document()))
    bar = rows[0].iter("svg")[0]
    beats = [r for r in bar.iter("rect") if "beat" in r.classes()]
    assert len(beats) == 60
    assert [i for i, b in enumerate(beats) if "failed" in b.classes()] == [17, 58]
    assert [i for i, b in enumerate(beats) if "limited" in b.classes()] == [40]
    assert [a.attrs["href"] for a in bar.iter("a")][:2] == ["probes/9001", "probes/9002"]
    assert beats[-1].iter("title")[0].all_text() == (
        "2026-11-26 11:59:00 UTC: 430 ms, ok, fingerprint fp_a1b2c3d4e5 (probe 9060)")
    stream = rows[1].iter("svg")[0]
    assert len([r for r in stream.iter("rect") if "empty" in r.classes()]) == 48
    assert not rows[2].iter("svg")[0].iter("a")


def test_state_line_shows_warmups_and_skips_escaped() -> None:
    root = dashboard(watch_state_document())
    rows = overview_rows(root)
    state = rows[0].iter("td")[-1]
    assert state.iter("span")[0].all_text() == "learning fingerprint pool (12 of 30 probes)"
    bars = state.iter("progress")
    assert [(b.attrs["value"], b.attrs["max"]) for b in bars] == [("12", "30"), ("12", "60")]
    assert f"latency {SCRIPT}" in state.all_text()
    assert "skipped: rate_limited 26" in state.all_text() and "maintenance" not in (
        state.all_text())
    assert IMG in rows[1].all_text()
    assert len(root.iter("script")) == 1 and not root.iter("img")
    assert [td.all_text() for td in rows[2].iter("td")][-1].endswith("skipped: budget_spent 288")


def test_many_targets_get_the_overview_and_no_charts() -> None:
    doc = document()
    plain = doc["targets"][0]
    doc["targets"] = [dict(plain, target=f"t{i:02d}") for i in range(CHARTS_UP_TO + 1)]
    root = dashboard(doc)
    assert len(overview_rows(root)) == CHARTS_UP_TO + 1 and not sections(root)
    assert "open one from the table" in root.all_text()


def test_a_target_view_shows_its_own_alerts_and_a_way_back() -> None:
    root = dashboard(document(), targets=["gpt-4o-mini-stream"])
    assert "No open alerts." in root.all_text()
    assert "all targets" in [a.all_text() for a in root.iter("nav")[0].iter("a")]
    assert "processing_ms median rose" in dashboard(document(), ["gpt-4o"]).all_text()
