"""The table, CSV and HTML renderers against fixture documents (tests/report_fixtures.py),
hostile strings included. HTML is read back with html.parser, CSV with the csv module."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from report_fixtures import (
    BUCKET_FIELDS,
    ESCAPE,
    FORMULA,
    IMG,
    NOW,
    SCRIPT,
    charts_of,
    columns,
    document,
    hostile_document,
    parse_html,
    sections,
)

from monitor.render import render_csv, render_html, render_table
from monitor.render.html import CSS
from monitor.render.text import ago, percentages, when

# --- table ----------------------------------------------------------------------------------


def test_table_has_a_block_per_target_with_every_field() -> None:
    text = render_table(document())
    blocks = text.split("\n\n")
    assert blocks[0] == ("report 2026-11-25 12:00:00 UTC .. 2026-11-26 12:00:00 UTC  "
                         "(generated 2026-11-26 12:00:00 UTC)")
    assert [b.splitlines()[0] for b in blocks[1:]] == [
        "gpt-4o", "gpt-4o-mini-stream", "azure-east",
        "replays (2 in the range, not counted above)"]
    plain = blocks[1]
    for expected in ("288, 285 ok (98.96%)", "http_server_error 2, read_timeout 1",
                     "skipped slots missed 1, rate_limited 3",
                     "fp_6ec83003ad 70.2%, fp_a1b2c3d4e5 29.8%", "gpt-4o-2024-08-06 100.0%",
                     "requests 9,999 of 10,000 left (99.99%)", "open alerts   1",
                     "#12 warning latency processing_ms", "read_timeout (HTTP -): Read timed out"):
        assert expected in plain, expected
    assert re.search(r"total\s+412\s+802\s+1,210", plain)
    assert "ttft" not in plain  # never measured for a plain target
    assert re.search(r"ttft\s+210\s+390\s+513", blocks[2])
    assert "tokens/s      p50 88.5  p95 61.0  p99 40.2" in blocks[2]
    idle = blocks[3]
    assert "0, 0 ok\n" in idle + "\n" and "latency ms    -" in idle and "rate limits   -" in idle
    assert "skipped slots budget_spent 288" in idle and "skipped slots none" in blocks[2]
    replays = blocks[4].splitlines()[1:]
    assert replays[0].split() == ["#901", "of", "#17", "gpt-4o", "2026-11-26", "10:00:00", "UTC",
                                  "(2", "h", "ago)", "ok", "398", "ms", "gpt-4o-2024-08-06",
                                  "fp_a1b2c3d4e5"]
    assert "FAIL rate_limited  12 ms  -  -" in replays[1]


def test_table_lists_only_the_newest_replays() -> None:
    doc = document()
    doc["replays"] = [dict(doc["replays"][0], probe_id=i) for i in range(1, 31)]
    lines = render_table(doc).split("\n\n")[-1].splitlines()
    assert lines[0] == ("replays (30 in the range, not counted above; the newest 20 shown, "
                        "all with --format json)")
    assert [line.split()[0] for line in lines[1:]] == [f"#{i}" for i in range(11, 31)]


def test_table_without_replays_has_no_replay_block() -> None:
    assert "replays" not in render_table(dict(document(), replays=[]))


def test_shares_shown_add_to_exactly_100_percent() -> None:
    doc = document()
    doc["targets"][0]["fingerprints"] = [
        {"fingerprint": f"fp_{i}", "count": 1, "share": 0.3333,
         "first_seen": "2026-11-25T12:00:00+00:00", "last_seen": "2026-11-26T11:00:00+00:00"}
        for i in range(3)]
    assert "fp_0 33.4%, fp_1 33.3%, fp_2 33.3%" in render_table(doc)
    assert "<code>fp_0</code> 33.4%, <code>fp_1</code> 33.3%" in render_html(doc)


def test_table_shows_terminal_escapes_as_text() -> None:
    text = render_table(hostile_document())
    assert "\x1b" not in text
    assert "\\x1b[31mred" in text
    assert not any(ord(c) < 32 and c != "\n" for c in text)


def test_table_of_no_targets_says_so() -> None:
    doc = dict(document(), targets=[])
    assert render_table(doc).endswith("no targets in this report")


# --- CSV ------------------------------------------------------------------------------------


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_csv_has_one_row_per_target_with_flattened_fields() -> None:
    rows = read_csv(render_csv(document()))
    assert [r["target"] for r in rows] == ["gpt-4o", "gpt-4o-mini-stream", "azure-east"]
    plain, stream, idle = rows
    assert plain["probes"] == "288" and plain["success_rate"] == "0.9896"
    assert plain["errors_http_server_error"] == "2" and stream["errors_read_timeout"] == "0"
    assert (plain["total_p50_ms"], plain["total_p95_ms"], plain["total_p99_ms"]) == (
        "412.0", "801.5", "1210.0")
    assert plain["ttft_p50_ms"] == "" and stream["ttft_p99_ms"] == "512.9"
    assert stream["tokens_per_s_p50"] == "88.5"
    assert plain["fingerprints"] == "fp_6ec83003ad:0.7018;fp_a1b2c3d4e5:0.2982"
    assert plain["models"] == "gpt-4o-2024-08-06:1.0"
    assert plain["limit_requests"] == "10000" and plain["headroom_tokens"] == "0.9999"
    assert plain["open_alerts"] == "1" and plain["last_error_kind"] == "read_timeout"
    assert idle["success_rate"] == "" and idle["total_p50_ms"] == "" and idle["probes"] == "0"
    header = render_csv(document()).split("\r\n")[0].split(",")
    assert header[:4] == ["target", "probes", "ok", "success_rate"]
    assert header[-3:] == ["open_alerts", "last_error_at", "last_error_kind"]
    assert [(r["skipped_budget_spent"], r["skipped_missed"], r["skipped_rate_limited"])
            for r in rows] == [("0", "1", "3"), ("0", "0", "0"), ("288", "0", "0")]


def test_csv_cells_that_a_spreadsheet_would_run_are_prefixed() -> None:
    rows = read_csv(render_csv(hostile_document()))
    plain, stream, _ = rows
    assert plain["models"] == f"'{FORMULA}:1.0"
    assert plain["last_error_kind"] == f"'{FORMULA}"
    assert stream["target"] == f"'{FORMULA}{IMG}"
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value
    assert f"errors_{IMG}" in rows[0]  # an odd error kind still gets its own column


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_guards_every_formula_start(start: str) -> None:
    doc = document()
    doc["targets"][0]["target"] = f"{start}1+1"
    assert read_csv(render_csv(doc))[0]["target"] == f"'{start}1+1"


# --- HTML -----------------------------------------------------------------------------------


def test_html_is_one_file_that_needs_no_script_or_network() -> None:
    text = render_html(document())
    root = parse_html(text)
    assert not root.iter("script")
    assert not [n for n in root.iter() if "src" in n.attrs]
    assert not [n for n in root.iter("link")]
    hrefs = [n.attrs["href"] for n in root.iter() if "href" in n.attrs]
    assert hrefs and all(h.startswith("#target-") for h in hrefs)
    assert "url(" not in CSS and "@import" not in CSS
    policy = next(n.attrs["content"] for n in root.iter("meta")
                  if n.attrs.get("http-equiv") == "Content-Security-Policy")
    assert policy.startswith("default-src 'none'; style-src 'sha256-")
    assert not [n for n in root.iter() if "style" in n.attrs]  # the policy would block them


def test_html_draws_three_charts_per_target() -> None:
    root = parse_html(render_html(document()))
    found = sections(root)
    assert [s.iter("h2")[0].all_text() for s in found] == ["gpt-4o", "gpt-4o-mini-stream",
                                                           "azure-east"]
    for section in found:
        assert set(charts_of(section)) == {"latency", "fingerprints", "headroom"}
    latency = charts_of(found[0])["latency"]
    # The empty bucket at hour 5 breaks the p50 line and its band in two.
    assert len([p for p in latency.iter("path") if "p50" in p.classes()]) == 2
    assert len([p for p in latency.iter("path") if "band" in p.classes()]) == 2
    assert len(latency.iter("circle")) == 23
    errors = [r for r in latency.iter("rect") if "errors" in r.classes()]
    assert [e.iter("title")[0].all_text() for e in errors] == [
        "2026-11-25T15:00:00+00:00: 1 of 12 probes failed",
        "2026-11-26T05:00:00+00:00: 1 of 12 probes failed"]
    headroom = charts_of(found[0])["headroom"]
    assert {c for p in headroom.iter("path") for c in p.classes()} >= {
        "headroom_requests", "headroom_tokens"}


def test_html_fingerprint_stripe_has_a_colour_per_fingerprint_and_a_legend() -> None:
    section = sections(parse_html(render_html(document())))[0]
    stripe = charts_of(section)["fingerprints"]
    bands = [g for g in stripe.iter("g") if "fingerprint" in g.classes()]
    assert len(bands) == 24 and all(len(b.iter("rect")) == 1 for b in bands)
    by_name = {b.iter("title")[0].all_text().split(": ")[1].split(" (")[0]: b.attrs["fill"]
               for b in bands}
    assert set(by_name) == {"fp_6ec83003ad", "fp_a1b2c3d4e5", "no fingerprint"}
    assert len(set(by_name.values())) == 3
    legend = next(u for u in section.iter("ul") if "legend" in u.classes())
    items = legend.iter("li")
    assert [i.iter("code")[0].all_text() for i in items] == ["fp_6ec83003ad", "fp_a1b2c3d4e5"]
    assert [i.iter("rect")[0].attrs["fill"] for i in items] == [
        by_name["fp_6ec83003ad"], by_name["fp_a1b2c3d4e5"]]


def test_html_marks_alerts_where_they_open_and_resolve() -> None:
    section = sections(parse_html(render_html(document())))[0]
    for chart in ("latency", "headroom"):
        marks = [g for g in charts_of(section)[chart].iter("g") if "alert" in g.classes()]
        titles = [g.iter("title")[0].all_text() for g in marks]
        assert titles[0].startswith("#9 info fingerprint new:fp_a1b2c3d4e5: opened "
                                    "2026-11-26T00:00:00+00:00, resolved 2026-11-26T02:00")
        assert titles[1].endswith("still open. processing_ms median rose from 380 ms to 760 ms")
        resolved = [len([ln for ln in g.iter("line") if "resolved" in ln.classes()])
                    for g in marks]
        assert resolved == [1, 0]
        assert all(len([ln for ln in g.iter("line") if "opened" in ln.classes()]) == 1
                   for g in marks)


def test_html_alert_opened_before_the_range_is_shaded_without_an_open_line() -> None:
    doc = document()
    doc["targets"][0]["alerts"][1]["opened_at"] = (NOW - timedelta(days=3)).isoformat()
    section = sections(parse_html(render_html(doc)))[0]
    mark = [g for g in charts_of(section)["latency"].iter("g") if "alert" in g.classes()][1]
    assert not mark.iter("line") and len(mark.iter("rect")) == 1


def test_html_target_without_probes_says_no_data() -> None:
    section = sections(parse_html(render_html(document())))[2]
    for svg in charts_of(section).values():
        assert "no data in this range" in svg.all_text()
    assert "no successful probes in this range" in section.all_text()


def test_html_numbers_follow_the_charts() -> None:
    section = sections(parse_html(render_html(document())))[0]
    cells = {row.iter("th")[0].all_text(): row.iter("td")[0].all_text()
             for table in section.iter("table") for row in table.iter("tr")
             if row.iter("th") and row.iter("td")}
    assert cells["probes"] == "288, 285 ok (98.96%)"
    assert cells["fingerprints"] == "fp_6ec83003ad 70.2%, fp_a1b2c3d4e5 29.8%"
    assert cells["tokens"] == "4,032 prompt + 288 completion = 4,320"
    assert cells["rate limits"].startswith("requests 9,999 of 10,000 left (99.99%)")
    assert cells["last error"].endswith("read_timeout (HTTP -): Read timed out after 30000 ms")
    assert cells["skipped slots"] == "missed 1, rate_limited 3"
    latency = [[td.all_text() for td in row.iter("td")] for row in section.iter("tr")
               if row.iter("td") and row.iter("td")[0].all_text() in ("total", "processing")]
    assert latency == [["total", "412", "802", "1,210"], ["processing", "380", "760", "1,150"]]


def test_html_renders_hostile_strings_as_text() -> None:
    text = render_html(hostile_document())
    root = parse_html(text)  # a broken-out tag would misnest and fail here
    assert not root.iter("script") and not root.iter("img")
    assert not [n for n in root.iter() if any(k.startswith("on") for k in n.attrs)]
    assert "\x1b" not in text
    page_text = root.all_text()
    assert SCRIPT in page_text and IMG in page_text and "\\x1b[31mred" in page_text
    titles = [t.all_text() for t in root.iter("title")]
    assert any(f'"quoted" & </title>{SCRIPT}{IMG}' in t for t in titles)
    assert any(t.startswith("2026-11-25T13:00:00+00:00: <script>") for t in titles)
    labels = [n.attrs["aria-label"] for n in root.iter("svg") if "aria-label" in n.attrs]
    assert f"latency of {FORMULA}{IMG}" in labels
    assert ESCAPE not in page_text


def test_html_lists_replays_apart_from_the_targets() -> None:
    root = parse_html(render_html(document()))
    replays = next(n for n in root.iter("section") if n.attrs.get("id") == "replays")
    rows = [[td.all_text() for td in row.iter("td")] for row in replays.iter("tr")
            if row.iter("td")]
    assert rows == [
        ["901", "17", "gpt-4o", "2026-11-26 10:00:00 UTC", "ok", "398", "gpt-4o-2024-08-06",
         "fp_a1b2c3d4e5"],
        ["902", "18", "gpt-4o", "2026-11-26 11:00:00 UTC", "rate_limited", "12", "-", "-"]]
    assert "not counted in any number above" in replays.all_text()
    assert not [n for n in parse_html(render_html(dict(document(), replays=[]))).iter("section")
                if n.attrs.get("id") == "replays"]


def test_html_of_a_month_uses_day_buckets_and_dates() -> None:
    doc = document()
    since = NOW - timedelta(days=30)
    doc["since"] = since.isoformat()
    first = {field: values[0] for field, values in doc["targets"][0]["series"]["columns"].items()}
    points = [dict(first, t=(since + timedelta(days=d)).isoformat()) for d in range(30)]
    doc["targets"][0]["series"] = {"bucket": "day", "columns": columns(points, BUCKET_FIELDS)}
    latency = charts_of(sections(parse_html(render_html(doc)))[0])["latency"]
    labels = [t.all_text() for t in latency.iter("text")]
    assert "2026-10-27" in labels and "2026-11-26" in labels
    bands = [r for r in charts_of(sections(parse_html(render_html(doc)))[0])["fingerprints"]
             .iter("rect") if "bucket" in r.classes()]
    widths = {round(float(b.attrs["width"]), 1) for b in bands}
    assert len(widths) == 1 and widths.pop() > 20  # a day wide, not an hour


def test_html_of_no_targets_says_so() -> None:
    assert "No targets in this report." in parse_html(
        render_html(dict(document(), targets=[]))).all_text()


def test_a_target_without_rate_limit_headers_renders_in_every_format() -> None:
    from tests.report_fixtures import document

    doc = document()
    for target in doc["targets"]:
        target["rate_limits"] = None  # no probe in the range carried a rate-limit header
    from monitor.render import render_csv, render_html, render_table

    assert "rate limits" in render_table(doc)
    assert "<svg" in render_html(doc)
    assert render_csv(doc).count("\r\n") == len(doc["targets"]) + 1


# --- text for people ------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "said"), [
    pytest.param(0.4, "just now", id="now"), pytest.param(42, "42 s ago", id="seconds"),
    pytest.param(190, "3 min ago", id="minutes"), pytest.param(7300, "2 h ago", id="hours"),
    pytest.param(5 * 86_400 + 5, "5 d ago", id="days"), pytest.param(-181, "in 3 min", id="ahead"),
])
def test_times_read_as_how_long_ago(seconds: float, said: str) -> None:
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    assert ago(now - timedelta(seconds=seconds), now) == said


def test_human_times_drop_microseconds_and_say_utc() -> None:
    now = datetime(2026, 11, 26, 12, 3, 0, tzinfo=UTC)
    assert when("2026-11-26T13:00:07.123456+01:00", now) == "2026-11-26 12:00:07 UTC (2 min ago)"
    assert when(None, now) == "-"


@pytest.mark.parametrize(("counts", "shown"), [
    pytest.param([1, 1, 1], ["33.4%", "33.3%", "33.3%"], id="thirds"),
    pytest.param([200, 85], ["70.2%", "29.8%"], id="two"),
    pytest.param([1] * 7, ["14.3%"] * 6 + ["14.2%"], id="sevenths"),
    pytest.param([0, 0], ["-", "-"], id="none"),
])
def test_shares_add_to_exactly_100(counts: list[int], shown: list[str]) -> None:
    assert percentages(counts) == shown
    if sum(counts):
        assert round(sum(float(s.rstrip("%")) for s in shown), 6) == 100.0
