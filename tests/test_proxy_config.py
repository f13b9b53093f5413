"""`[[routes]]` in monitor.toml, and `monitor proxy` as a command: exact errors, a routes-only
file, the refusal to listen in public, and a real process forwarding, logging and stopping."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner

from monitor import config, defaults
from monitor.cli import cli
from monitor.cli import proxy as proxy_cli
from monitor.domain import Provider
from monitor.errors import ConfigError
from monitor.proxy.exchange import Route
from monitor.sim import Simulator
from tests.conftest import TEST_KEY
from tests.waiting import Lines

ROUTE = """
[[routes]]
name = "openai"
provider = "openai"
upstream = "https://api.openai.com/"
"""


@pytest.fixture(autouse=True)
def in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def write(text: str) -> str:
    Path("monitor.toml").write_text(textwrap.dedent(text))
    return "monitor.toml"


def test_a_routes_only_file_serves_the_proxy_and_loads_for_other_commands() -> None:
    path = write(ROUTE + """
        [[routes]]
        name = "claude.v2"
        provider = "anthropic"
        upstream = "http://127.0.0.1:8080/base"
        record = "sample:0.25"
        max_body_bytes = 4096
        """)
    loaded = config.load_proxy(path, environ={})
    assert loaded.routes == (
        Route("openai", Provider.OPENAI, "https://api.openai.com"),
        Route("claude.v2", Provider.ANTHROPIC, "http://127.0.0.1:8080/base", "sample:0.25",
              0.25, 4096),
    )
    assert loaded.settings.targets == ()
    assert config.load(path, environ={}).targets == ()


@pytest.mark.parametrize(("route", "key", "expected"), [
    pytest.param('provider = "openai"\nupstream = "http://x"', "routes[1].name",
                 'expected a route name like "openai"', id="no-name"),
    pytest.param('name = "a/b"\nprovider = "openai"\nupstream = "http://x"', "routes[1].name",
                 'expected a route name like "openai"', id="name-not-a-segment"),
    pytest.param('name = "openai"\nprovider = "openai"\nupstream = "http://x"', "routes[1].name",
                 "expected a unique name (routes[0] already uses it), got 'openai'",
                 id="duplicate"),
    pytest.param('name = "b"\nprovider = "gemini"\nupstream = "http://x"', "routes[1].provider",
                 'expected one of "openai", "azure", "openai-compatible", "anthropic"',
                 id="provider"),
    pytest.param('name = "b"\nprovider = "openai"', "routes[1].upstream",
                 "expected the upstream URL", id="no-upstream"),
    pytest.param('name = "b"\nprovider = "openai"\nupstream = "ftp://x"', "routes[1].upstream",
                 "expected an http(s) URL", id="scheme"),
    pytest.param('name = "b"\nprovider = "openai"\nupstream = "https://u:pw@x"',
                 "routes[1].upstream", "without credentials in it (the app sends its own key)",
                 id="userinfo"),
    pytest.param('name = "b"\nprovider = "openai"\nupstream = "https://x/v1?a=1"',
                 "routes[1].upstream", "without a query or fragment", id="query"),
    pytest.param('name = "b"\nprovider = "openai"\nupstream = "http://x"\nrecord = "some"',
                 "routes[1].record", '"all", "headers" or "sample:F"', id="record"),
    pytest.param('name = "b"\nprovider = "openai"\nupstream = "http://x"\nrecord = "sample:1.5"',
                 "routes[1].record", "got 'sample:1.5'", id="sample-over-one"),
    pytest.param('name = "b"\nprovider = "openai"\nupstream = "http://x"\nmax_body_bytes = 0',
                 "routes[1].max_body_bytes", "an integer of at least 1", id="max-body"),
    pytest.param('name = "b"\nprovider = "openai"\nupstream = "http://x"\nmodel = "m"',
                 "routes[1].model", "expected a known key", id="unknown-key"),
])
def test_a_bad_route_names_the_file_the_key_and_what_was_expected(route: str, key: str,
                                                                 expected: str) -> None:
    path = write(ROUTE + "\n[[routes]]\n" + route + "\n")
    for load in (config.load, config.load_proxy):
        with pytest.raises(ConfigError) as raised:
            load(path, environ={})
        assert str(raised.value).startswith(f"monitor.toml: {key}: ")
        assert expected in str(raised.value)
    assert "pw" not in str(raised.value)


def test_the_proxy_needs_at_least_one_route() -> None:
    path = write('[database]\nurl = "sqlite:///m.db"\n')
    with pytest.raises(ConfigError, match=r"monitor.toml: routes: expected at least one "
                                          r"\[\[routes\]\] table"):
        config.load_proxy(path, environ={})
    with pytest.raises(ConfigError, match=r"routes: expected an array of tables"):
        config.load_proxy(write('routes = "openai"\n'), environ={})


def test_the_default_port_shown_in_help_is_the_one_in_defaults() -> None:
    assert proxy_cli._DEFAULT_PORT == defaults.PROXY_PORT


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7"])
def test_the_command_refuses_a_public_address_without_a_token(host: str) -> None:
    write(ROUTE)
    result = CliRunner().invoke(cli, ["proxy", "--host", host, "--port", "0"])
    assert result.exit_code == 2, result.output
    assert f"refusing to listen on {host}" in result.output
    assert "MONITOR_PROXY_TOKEN" in result.output and "--insecure-public" in result.output


@pytest.mark.parametrize(("value", "says"), [("", "is set but empty"), ("  ", "is set but blank"),
                                             ("tok\n", "contains a newline")])
def test_a_proxy_token_that_could_never_be_sent_is_refused(
        value: str, says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    write(ROUTE)
    monkeypatch.setenv("MONITOR_PROXY_TOKEN", value)
    result = CliRunner().invoke(cli, ["proxy", "--port", "0"])
    assert result.exit_code == 2, result.output
    assert f"MONITOR_PROXY_TOKEN {says}" in result.output


@pytest.mark.parametrize("record", [True, False], ids=["recording", "no-record"])
def test_monitor_proxy_forwards_records_each_call_and_stops_on_sigterm(
        record: bool, tmp_path: Path, sim_server: Simulator) -> None:
    write(ROUTE.replace("https://api.openai.com/", sim_server.url))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MONITOR_", "OPENAI_"))}
    if record:
        subprocess.run([sys.executable, "-m", "monitor", "db", "upgrade"], cwd=tmp_path,
                       env=environ, check=True, capture_output=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "proxy", "--port", "0",
         *([] if record else ["--no-record"])], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    assert process.stdout is not None and process.stderr is not None
    out, err = Lines(process.stdout), Lines(process.stderr)
    try:
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)",
                             out.wait_for("listening on").strip())
        assert match
        assert f"/openai/ -> {sim_server.url} (openai)" in out.wait_for("/openai/")
        with openai.OpenAI(api_key=TEST_KEY, base_url=f"{match[1]}/openai/v1",
                           max_retries=0) as client:
            reply = client.chat.completions.create(model="gpt-4o", messages=[
                {"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content
        if not record:
            assert err.wait_for("openai POST /v1/chat/completions 200")
        else:  # a second recording proxy here would share the running one's spool
            second = CliRunner().invoke(cli, ["proxy", "--port", "0"])
            assert second.exit_code == 1, second.output
            assert ("another monitor process is spooling to monitor-proxy-spool.jsonl"
                    in second.output)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert "stopped" in out.close()
    logged = err.close()
    assert TEST_KEY not in logged and "hello" not in logged
    if record:  # stored by the time the command has stopped, the key nowhere in the file
        with sqlite3.connect(tmp_path / "monitor.db") as db:
            stored = db.execute("SELECT t.name, t.kind, f.model FROM probes p "
                                "JOIN targets t ON t.id = p.target_id "
                                "JOIN probe_facets f ON f.id = p.facet_id").fetchall()
        assert stored == [("openai/gpt-4o", "traffic", reply.model)]
        assert TEST_KEY.encode() not in (tmp_path / "monitor.db").read_bytes()
