"""`monitor logs` and `monitor show`: stored probes read back, on each database, with hostile
model output kept harmless on the terminal."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from monitor.cli import cli
from monitor.config import load
from monitor.render.probe_page import POLICY
from monitor.render.probes import body_lines
from monitor.sim import SimClient, Simulator
from monitor.store import db
from monitor.store.models import ProbeRow
from tests.conftest import write_config
from tests.report_fixtures import parse_html, running
from tests.test_web import get

HOSTILE = "\x1b[31mred\x1b[0m</pre><script>alert(1)</script>\u202egpt"


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def stored(tmp_path: Path, sim_server: Simulator, sim: SimClient, database_url: str) -> Path:
    """Three probes of `plain` (ok, hostile answer on a new fingerprint, 503) and one of
    `streamed`: ids 1 to 4 in that order."""
    path = write_config(tmp_path / "monitor.toml", [
        {"name": "plain", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
         "model": "gpt-4o"},
        {"name": "streamed", "provider": "openai-compatible",
         "base_url": f"{sim_server.url}/v1", "model": "gpt-4o-mini", "stream": True},
    ], database_url)
    assert invoke("probe", "plain", "-c", str(path)).exit_code == 0
    sim.enqueue({"content": HOSTILE, "system_fingerprint": "fp_other"})
    assert invoke("probe", "plain", "-c", str(path)).exit_code == 0
    sim.enqueue({"fault": "http_503"})
    assert invoke("probe", "plain", "-c", str(path)).exit_code == 1
    assert invoke("probe", "streamed", "-c", str(path)).exit_code == 0
    return path


def test_logs_lists_probes_newest_first_with_filters(stored: Path) -> None:
    result = invoke("logs", "-c", str(stored))
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["#4", "#3", "#2", "#1"]
    assert "http_server_error 503" in lines[1] and "streamed" in lines[0]
    assert '"pong"' in lines[3] and re.search(r"UTC \((just now|\d+ s ago)\)", lines[3])
    failed = invoke("logs", "--failed", "-c", str(stored)).output.strip().splitlines()
    assert [line.split()[0] for line in failed] == ["#3"]
    some = invoke("logs", "-n", "2", "--target", "plain", "-c", str(stored)).output
    assert [line.split()[0] for line in some.strip().splitlines()] == ["#3", "#2"]
    assert invoke("logs", "--since", "2000-01-01", "-c", str(stored)).output.count("#") == 4
    later = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert "no probes" in invoke("logs", "--since", later, "-c", str(stored)).output


def test_logs_json_holds_the_full_stored_records(stored: Path) -> None:
    records = json.loads(invoke("logs", "--json", "-c", str(stored)).output)
    assert [r["id"] for r in records] == [4, 3, 2, 1]
    hostile = records[2]
    assert hostile["choices"][0]["content"] == HOSTILE
    assert hostile["response_headers"]["content-type"].startswith("application/json")
    assert hostile["request_payload"]["model"] == "gpt-4o"
    assert json.loads(hostile["raw_response"])["system_fingerprint"] == "fp_other"


def test_terminal_output_escapes_what_the_model_sent(stored: Path) -> None:
    for args in (("logs",), ("show", "2")):
        output = invoke(*args, "-c", str(stored)).output
        assert "\x1b" not in output and "\u202e" not in output
        assert "\\x1b[31mred" in output or "\\u001b[31mred" in output


def test_show_prints_one_probe_in_full_and_what_changed(stored: Path) -> None:
    result = invoke("show", "2", "-c", str(stored))
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("probe #2 of plain")
    assert "same target       previous #1, next #3" in out
    assert "system_fingerprint: fp_6ec83003ad -> fp_other" in out
    assert 'answer text: changed, was "pong"' in out
    assert "x-request-id: req_" in out  # every header
    assert '"content": "Reply with the single word: pong"' in out  # the payload, pretty
    assert '    "system_fingerprint": "fp_other"' in out  # the body, pretty JSON
    failed = invoke("show", "3", "-c", str(stored)).output
    assert "outcome           http_server_error 503: HTTP 503" in failed
    assert "ok: True -> False" in failed
    first = invoke("show", "1", "-c", str(stored)).output
    assert "nothing to compare with" in first
    stream = invoke("show", "4", "-c", str(stored)).output
    assert "sse)" in stream and "data: [DONE]" in stream
    assert "output tokens/s   -" in stream  # one token: undefined, not 0


def test_show_json_and_unknown_ids(stored: Path) -> None:
    detail = json.loads(invoke("show", "2", "--json", "-c", str(stored)).output)
    assert detail["probe"]["id"] == 2 and detail["previous_id"] == 1 and detail["next_id"] == 3
    changes = detail["changes"]
    assert changes["base_id"] == 1 and changes["answer_changed"]
    assert {"field": "system_fingerprint", "before": "fp_6ec83003ad",
            "after": "fp_other"} in changes["fields"]
    assert "x-request-id" in [h["name"] for h in changes["headers_changed"]]
    missing = invoke("show", "99", "-c", str(stored))
    assert missing.exit_code == 1 and "no probe #99" in missing.output


def test_a_replay_is_shown_as_one_and_compared_with_its_original(
        stored: Path, database_url: str) -> None:
    engine = db.open_store(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(ProbeRow.__table__.update().where(ProbeRow.id == 4)
                               .values(replay_of=1))
    finally:
        engine.dispose()
    listed = invoke("logs", "-n", "1", "-c", str(stored)).output
    assert "(replay of #1)" in listed
    shown = invoke("show", "4", "-c", str(stored)).output
    assert "a replay of probe #1" in shown and "compared with the original, probe #1" in shown


@pytest.mark.parametrize(("record", "how", "lines"), [
    pytest.param({"raw_response": '{"a": [1]}'}, "json", ["{", '  "a": [', "    1", "  ]", "}"],
                 id="json"),
    pytest.param({"raw_response": "<html>\nbusy</html>"}, "text", ["<html>", "busy</html>"],
                 id="html"),
    pytest.param({"stream": True, "raw_response": 'data: {"x": 1}\n\n: ping\n\ndata: [DONE]\n\n'},
                 "sse", ['data: {"x":1}', ": ping", "data: [DONE]"], id="sse"),
    pytest.param({"raw_response_base64": "/w=="}, "base64", ["/w=="], id="bytes"),
])
def test_bodies_are_laid_out_by_kind(record: dict[str, Any], how: str,
                                     lines: list[str]) -> None:
    assert body_lines(record) == (how, lines)


# --- /probes/{id} ---------------------------------------------------------------------------


@pytest.fixture
def served(stored: Path, database_url: str) -> Iterator[str]:
    from monitor.web import serving

    engine = db.open_store(database_url)
    settings = load(str(stored))
    try:
        with running(serving.build_app(engine, TOKEN, lambda: settings)) as url:
            yield url
    finally:
        engine.dispose()


TOKEN = "tok-" "inspect-7e1f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_the_probe_page_shows_everything_with_model_text_escaped(served: str) -> None:
    answer = get(served, "/probes/2", AUTH)
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert answer.headers["content-security-policy"] == POLICY
    assert "script-src" not in POLICY and "default-src 'none'" in POLICY
    page = answer.body.decode()
    root = parse_html(page)  # fails on markup the answer could have opened or closed
    assert not root.iter("script") and "<script>alert" not in page
    assert "\\x1b[31mred" in page and "\\u202egpt" in page  # shown, as escapes
    text = root.all_text()
    assert "</pre><script>alert(1)</script>" in text  # the answer, as text
    assert "x-request-id" in text and "set-cookie" in text  # every header
    assert "system_fingerprint: fp_6ec83003ad -> fp_other" in text
    assert '"fp_other"' in text and "Reply with the single word: pong" in text
    links = {a.all_text(): a.attrs["href"] for a in root.iter("a")}
    assert links["dashboard"] == "/"
    assert links["previous probe #1"] == "/probes/1" and links["next probe #3"] == "/probes/3"
    assert links["probe #1"] == "/probes/1"  # the probe it is compared with


def test_the_probe_page_wants_the_token_and_knows_missing_ids(served: str) -> None:
    assert get(served, "/probes/2").status == 401
    for path in ("/probes/99", "/probes/abc", "/probes/", "/probes/-1",
                 f"/probes/{2**63}", "/probes/%3Cb%3E"):
        answer = get(served, path, AUTH)
        assert answer.status == 404, path
        assert "No probe" in answer.body.decode() and "<b>" not in answer.body.decode()
    assert get(served, "/probes/2", AUTH, method="HEAD").body == b""
