"""Bad input on the command line, in the environment and over HTTP (issue 11): each gets one
line of error and exit 2 (usage, configuration) or 1 (runtime), never a traceback, and no
credential is ever shown or stored."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest
import requests
from click.testing import CliRunner, Result

from monitor.cli import cli
from monitor.cli.common import atomic_output
from monitor.httpd import is_loopback
from monitor.web.app import WebServer
from tests.conftest import TEST_KEY, write_config

DEADLINE_S = 30  # for a subprocess to say what it is doing


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    # catch_exceptions=True: an exception that escapes is recorded rather than raised, so the
    # assertions below see it.
    return CliRunner().invoke(cli, list(args), env=env)


def one_error_line(result: Result, exit_code: int) -> str:
    """The one `Error:` line of a failed command, after checking it failed cleanly."""
    output = result.output
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception), output)
    assert result.exit_code == exit_code, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.fixture
def config(tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config over a migrated SQLite database, one target that is never probed here."""
    monkeypatch.chdir(tmp_path)
    database = tmp_path / "monitor.db"
    shutil.copy(sqlite_template, database)
    return write_config(
        tmp_path / "monitor.toml",
        [{"name": "local", "provider": "openai-compatible", "base_url": "http://127.0.0.1:9/v1",
          "model": "m"}],
        f"sqlite:///{database}")


# --- usage errors: exit 2 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        pytest.param(["status"], {"MONITOR_DATABASE_URL": "postgresql+nodriver://m@db/monitor"},
                     "expected a PostgreSQL URL with the psycopg driver", id="database-driver"),
        pytest.param(["status"], {"MONITOR_DATABASE_URL": "postgresql://m@db:99999/monitor"},
                     "expected a PostgreSQL URL with a port from 1 to 65535",
                     id="database-port-too-big"),
        pytest.param(["status"], {"MONITOR_DATABASE_URL": "postgresql://m@db:abc/monitor"},
                     "expected a PostgreSQL URL with a port from 1 to 65535",
                     id="database-port-words"),
        pytest.param(["ack", str(2**70)], {}, "is not in the range 1<=x<=9223372036854775807",
                     id="ack-id-beyond-bigint"),
        pytest.param(["replay", str(2**70)], {}, "is not in the range", id="replay-id-huge"),
        pytest.param(["import", "missing.jsonl"], {}, "'missing.jsonl' does not exist",
                     id="import-missing"),
        pytest.param(["import", "."], {}, "is a directory", id="import-directory"),
        pytest.param(["report", "-o", "monitor.toml/report.txt"], {},
                     "'monitor.toml' is not a directory", id="report-output-under-a-file"),
        pytest.param(["report", "-o", "nowhere/report.txt"], {}, "'nowhere' is not a directory",
                     id="report-output-missing-directory"),
        pytest.param(["report", "-o", "."], {}, "'.' is a directory", id="report-output-dir"),
        pytest.param(["report", "--since", "9999999d"], {},
                     "'9999999d' is outside the calendar (years 1 to 9999 in UTC)",
                     id="since-overflows"),
        pytest.param(["report", "--since", "9999-12-31T23:59:59-23:59"], {},
                     "is outside the calendar", id="since-offset-overflows"),
        pytest.param(["report", "--since", "9" * 400 + "s"], {}, "expected a duration back",
                     id="since-infinite"),
        pytest.param(["export", "--until", "9999999d"], {}, "is outside the calendar",
                     id="export-until-overflows"),
        pytest.param(["export", "--database", "postgresql://m@db:0/monitor"], {},
                     "--database: expected a PostgreSQL URL with a port from 1 to 65535",
                     id="export-database-port"),
        pytest.param(["run", "--spool", "monitor.toml/spool.jsonl"], {},
                     "'monitor.toml' is not a directory", id="spool-under-a-file"),
        pytest.param(["run", "--spool", "."], {}, "is a directory", id="spool-directory"),
        pytest.param(["run", "--once", "--http", "127.0.0.1:0"], {},
                     "--http serves while the daemon runs and --once exits after one round",
                     id="once-with-http"),
        pytest.param(["run", "--http", "127.0.0.1:99999"], {}, "expected HOST:PORT",
                     id="http-port-too-big"),
        pytest.param(["serve"], {"MONITOR_WEB_TOKEN": "  "},
                     "MONITOR_WEB_TOKEN is set but blank", id="token-blank"),
        pytest.param(["serve"], {"MONITOR_WEB_TOKEN": ""},
                     "MONITOR_WEB_TOKEN is set but empty", id="token-empty"),
        pytest.param(["serve"], {"MONITOR_WEB_TOKEN": "tok-123\n"},
                     "MONITOR_WEB_TOKEN contains a newline", id="token-newline"),
        pytest.param(["run", "--http", "127.0.0.1:0"], {"MONITOR_WEB_TOKEN": " "},
                     "MONITOR_WEB_TOKEN is set but blank", id="run-token-blank"),
        pytest.param(["serve", "--allowed-host", "http://dash.example/"], {},
                     '--allowed-host: expected a host name like "monitor.example.com"',
                     id="allowed-host-not-a-name"),
        pytest.param(["serve", "--host", "0.0.0.0"], {},
                     "--host 0.0.0.0 is reachable from other machines and MONITOR_WEB_TOKEN "
                     "is not set", id="serve-public-without-token"),
        pytest.param(["run", "--http", "0.0.0.0:0"], {},
                     "--http 0.0.0.0 is reachable from other machines", id="run-public"),
        pytest.param(["serve", "--host", "192.0.2.1"], {}, "is reachable from other machines",
                     id="serve-other-address"),
    ],
)
def test_bad_input_is_one_line_and_exit_two(config: Path, args: list[str], env: dict[str, str],
                                            expected: str) -> None:
    result = invoke(*args, "--config", str(config), env=env)
    assert expected in one_error_line(result, 2)


def test_export_to_a_directory_leaves_no_temporary_file(config: Path, tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    before = set(tmp_path.iterdir())
    result = invoke("export", "-o", str(target), "--config", str(config))
    assert "is a directory" in one_error_line(result, 2)
    assert set(tmp_path.iterdir()) == before and not list(target.iterdir())


def test_export_writes_its_file_whole_and_only_beside_it(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    result = invoke("export", "-o", str(out), "--config", str(config))
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "export.jsonl", "monitor.db", "monitor.toml"]


def test_a_failed_atomic_write_removes_its_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "report.csv"
    target.write_text("before")
    with pytest.raises(RuntimeError), atomic_output(target) as out:
        out.write("half a report")
        raise RuntimeError("the database went away")
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv"]
    assert target.read_text() == "before"


# --- runtime errors: exit 1 -----------------------------------------------------------------


def test_import_of_a_binary_file_is_one_line(config: Path, tmp_path: Path) -> None:
    binary = tmp_path / "probes.jsonl"
    binary.write_bytes(b"\x00\xd0\xff\xfe" * 100)
    result = invoke("import", str(binary), "--config", str(config))
    assert one_error_line(result, 1) == (
        f"Error: {binary}:1: not UTF-8 text, so not a `monitor export` file")


def test_run_http_on_a_busy_port_is_one_line_and_exit_one(config: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = subprocess.run(
            [sys.executable, "-m", "monitor", "run", "--config", str(config), "--http",
             f"127.0.0.1:{port}", "--spool", str(tmp_path / "spool.jsonl")],
            check=False, capture_output=True, text=True, cwd=tmp_path, timeout=DEADLINE_S,
            env=_environ())
    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"]


# --- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "env"),
    [
        pytest.param(f"https://user:{TEST_KEY}@api.example.com/v1", {}, id="userinfo"),
        pytest.param(f"https://api.example.com/v1?api-key={TEST_KEY}", {}, id="query"),
        pytest.param("https://api.example.com/v1", {"LLM_KEY": TEST_KEY + "\n"},
                     id="key-with-newline"),
    ],
)
def test_a_refused_key_appears_in_no_output_and_no_database(
    tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch, base_url: str,
    env: dict[str, str],
) -> None:
    monkeypatch.chdir(tmp_path)
    database = tmp_path / "monitor.db"
    shutil.copy(sqlite_template, database)
    config = write_config(tmp_path / "monitor.toml", [
        {"name": "leaky", "provider": "openai-compatible", "base_url": base_url, "model": "m",
         "api_key_env": "LLM_KEY"}], f"sqlite:///{database}")
    env = {"LLM_KEY": "sk-fine-but-unused", **env}
    for args in (["config", "check"], ["config", "check", "--json"], ["probe"],
                 ["run", "--once"]):
        result = invoke(*args, "--config", str(config), env=env)
        line = one_error_line(result, 2)
        assert TEST_KEY not in result.output, args
        assert "****" in line or "control characters" in line
    assert TEST_KEY.encode() not in database.read_bytes()


# --- the dashboard: Host names, public binds, slow clients ----------------------------------


def _ok_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def dashboard() -> Iterator[str]:
    with WebServer(_ok_app, "127.0.0.1", 0, allowed_hosts=["Dash.Example.com"]) as server:
        yield server.url


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.1:{port}", "localhost", "localhost:{port}", "LOCALHOST.",
     "[::1]:{port}", "192.0.2.7:{port}", "dash.example.com", "dash.example.com:{port}",
     "DASH.EXAMPLE.COM."],
)
def test_known_host_names_are_answered(dashboard: str, host: str) -> None:
    port = dashboard.rsplit(":", 1)[1]
    answer = requests.get(dashboard, headers={"Host": host.format(port=port)}, timeout=10)
    assert (answer.status_code, answer.text) == (200, "ok")


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:{port}", "localhost.evil.example",
             "dash.example.com.evil.example", "127.0.0.1.nip.io"],
)
def test_other_host_names_are_refused_against_dns_rebinding(dashboard: str, host: str,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    port = dashboard.rsplit(":", 1)[1]
    answer = requests.get(f"{dashboard}/api/report", headers={"Host": host.format(port=port)},
                          timeout=10)
    assert answer.status_code == 421
    assert "--allowed-host" in answer.json()["error"]
    assert "not an allowed host name" in caplog.text


def test_loopback_is_told_from_public_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "", "192.0.2.1", "example.com"]))


def _environ(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    return {**environ, **extra}


def _serve(config: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "serve", "--port", "0", "--config", str(config),
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=config.parent, env=_environ(**env))


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=DEADLINE_S)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def test_serve_on_every_address_without_a_token_is_refused(config: Path) -> None:
    process = _serve(config, "--host", "0.0.0.0")
    try:
        _, stderr = process.communicate(timeout=DEADLINE_S)
    finally:
        _stop(process)
    assert process.returncode == 2
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("Error:")] == [(
        "Error: --host 0.0.0.0 is reachable from other machines and MONITOR_WEB_TOKEN is not "
        "set: set MONITOR_WEB_TOKEN to require a token, or pass --insecure-public to serve "
        "anyone")]


def _listening(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("listening on "), line
    return line.split()[-1].replace("0.0.0.0", "127.0.0.1")


def test_serve_insecure_public_warns_and_still_checks_the_host(config: Path) -> None:
    process = _serve(config, "--host", "0.0.0.0", "--insecure-public", "--allowed-host",
                     "dash.example")
    try:
        base = _listening(process)
        assert process.stderr is not None
        warning = process.stderr.readline()
        assert warning.startswith("warning: serving on 0.0.0.0 without MONITOR_WEB_TOKEN")
        alerts = f"{base}/api/alerts"
        assert requests.get(alerts, timeout=10).status_code == 200
        assert requests.get(alerts, headers={"Host": "dash.example"}, timeout=10).json() == []
        assert requests.get(alerts, headers={"Host": "evil.example"},
                            timeout=10).status_code == 421
    finally:
        _stop(process)


def test_serve_on_every_address_with_a_token_needs_no_flag(config: Path) -> None:
    process = _serve(config, "--host", "0.0.0.0", MONITOR_WEB_TOKEN="tok-5e1d9c")
    try:
        base = _listening(process)
        assert requests.get(f"{base}/api/alerts", timeout=10).status_code == 401
        answer = requests.get(f"{base}/api/alerts", timeout=10,
                              headers={"Authorization": "Bearer tok-5e1d9c"})
        assert answer.status_code == 200
    finally:
        _stop(process)


def test_report_api_answers_400_for_dates_outside_the_calendar(config: Path) -> None:
    process = _serve(config)
    try:
        base = _listening(process)
        for query in ("since=9999999d", "since=9999-12-31T23:59:59-23:59",
                      "until=9999999d", "since=" + "9" * 400 + "s"):
            answer = requests.get(f"{base}/api/report?{query}", timeout=10)
            assert answer.status_code == 400, query
            assert answer.json()["error"].startswith(query.partition("=")[0] + ":")
    finally:
        _stop(process)


def _closed_within(connection: socket.socket, seconds: float, trickle: bytes = b"") -> float:
    """Send `trickle` a byte at a time until the server closes the connection; how long it
    took. Each wait for the server's close doubles as the pause between bytes."""
    started = time.monotonic()
    connection.settimeout(0.3)
    for byte in [trickle[i:i + 1] for i in range(len(trickle))] or [b""] * 1000:
        if time.monotonic() - started > seconds:
            break
        try:
            if byte:
                connection.sendall(byte)
            if connection.recv(1024) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    raise AssertionError(f"the server kept the connection open for {seconds} s")


@pytest.mark.parametrize("trickle", [b"", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X" * 200],
                         ids=["idle", "slowloris"])
def test_a_slow_client_is_cut_off_with_one_log_line(
    trickle: bytes, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="monitor.web.app")
    with WebServer(_ok_app, "127.0.0.1", 0, request_timeout_s=1) as server:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            took = _closed_within(connection, 10, trickle)
        # A well-behaved client is still served once the slow one is gone.
        assert requests.get(server.url, timeout=10).text == "ok"
    assert 0.9 <= took < 5
    cut = [r for r in caplog.records if "no complete request within 1 s" in r.getMessage()]
    assert len(cut) == 1 and cut[0].exc_info is None
    assert "Traceback" not in capsys.readouterr().err
