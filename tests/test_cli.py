"""The CLI end to end: real config files, the simulator over loopback, real databases."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from monitor.cli import cli
from monitor.sim import SimClient, Simulator
from tests.conftest import write_config
from tests.waiting import Lines


def invoke(*args: str, **kwargs: Any) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, **kwargs)


@pytest.fixture
def config_file(tmp_path: Path, sim_server: Simulator, database_url: str) -> Path:
    return write_config(
        tmp_path / "monitor.toml",
        [
            {"name": "plain", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
             "model": "gpt-4o"},
            {"name": "streamed", "provider": "openai-compatible",
             "base_url": f"{sim_server.url}/v1", "model": "gpt-4o-mini", "stream": True},
        ],
        database_url,
    )


def test_probe_prints_one_line_per_target_and_exits_zero(
    sim: SimClient, config_file: Path
) -> None:
    result = invoke("probe", "--config", str(config_file))
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    assert {line.split()[0] for line in lines} == {"plain", "streamed"}
    assert all(" ok " in line and "gpt-4o" in line for line in lines)


def test_probe_json_prints_stored_records_with_ids(sim: SimClient, config_file: Path) -> None:
    result = invoke("probe", "plain", "--json", "--config", str(config_file))
    assert result.exit_code == 0, result.output
    [record] = json.loads(result.output)
    assert isinstance(record["id"], int)
    assert record["target"] == "plain"
    assert record["model"] == "gpt-4o-2024-08-06"
    assert json.loads(record["raw_response"])["id"] == record["response_id"]
    for field in ("system_fingerprint", "x_request_id", "ratelimit_limit_tokens",
                  "time_to_headers_ms", "response_headers", "request_payload", "prompt_tokens"):
        assert record[field] is not None, field


def test_a_failed_probe_is_stored_and_exits_one(sim: SimClient, config_file: Path) -> None:
    sim.enqueue({"fault": "http_503"})
    result = invoke("probe", "plain", "--json", "--config", str(config_file))
    assert result.exit_code == 1
    [record] = json.loads(result.output)
    assert record["error_kind"] == "http_server_error"
    assert record["http_status"] == 503


def test_unknown_target_is_a_usage_error(config_file: Path) -> None:
    result = invoke("probe", "nope", "--config", str(config_file))
    assert result.exit_code == 2
    assert "unknown target 'nope'" in result.output


def test_config_error_exits_two_with_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "monitor.toml"
    path.write_text('[[targets]]\nname = "x"\nmodel = "m"\ntimeout = 30\n')
    result = invoke("probe", "--config", str(path))
    assert result.exit_code == 2
    assert f"{path}: targets[0].timeout: expected" in result.output


def test_a_database_behind_head_is_refused(tmp_path: Path, sim_server: Simulator) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    path = write_config(
        tmp_path / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o"}],
        url,
    )
    result = invoke("probe", "--config", str(path))
    assert result.exit_code == 2
    assert "run `monitor db upgrade`" in result.output
    upgraded = invoke("db", "upgrade", "--config", str(path))
    assert upgraded.exit_code == 0
    assert "upgraded from empty to" in upgraded.output
    assert invoke("db", "upgrade", "--config", str(path)).output.strip().endswith(
        "is already at " + upgraded.output.split()[-1]
    )
    assert invoke("probe", "--config", str(path)).exit_code == 0


def test_database_url_from_the_environment_wins(
    tmp_path: Path, sim_server: Simulator, database_url: str, sim: SimClient
) -> None:
    path = write_config(
        tmp_path / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o"}],
        "sqlite:////nonexistent/dir/never.db",
    )
    result = invoke("probe", "--config", str(path), env={"MONITOR_DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output


def test_config_check_shows_targets_and_tokens_per_day(config_file: Path) -> None:
    result = invoke("config", "check", "--config", str(config_file))
    assert result.exit_code == 0, result.output
    assert "plain" in result.output and "streamed" in result.output
    described = json.loads(invoke("config", "check", "--json", "-c", str(config_file)).output)
    assert [t["name"] for t in described] == ["plain", "streamed"]
    assert all(t["expected_tokens_per_day"] > 0 for t in described)


def test_demo_leaves_a_folder_whose_alerts_can_be_read_with_no_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's promise: `monitor demo` in an empty folder, then `monitor alerts` there."""
    def monitor(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "monitor", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)

    demo = monitor("demo")
    assert demo.returncode == 0, demo.stderr
    assert {p.name for p in tmp_path.iterdir()} >= {"monitor.toml", ".env", "monitor-demo.db"}
    assert "sim-demo-key" in (tmp_path / ".env").read_text()  # the stand-in, never a real key
    alerts = monitor("alerts", "--json")
    assert alerts.returncode == 0, alerts.stderr
    found = json.loads(alerts.stdout)
    # What it announced is what it raised: gpt-4o re-pointed, local-llama down, stream slower
    # (a machine loaded enough to slow real probes can add a latency alert of its own).
    assert {(a["target"], a["kind"]) for a in found} >= {
        ("gpt-4o", "model"), ("gpt-4o", "fingerprint"), ("local-llama", "availability"),
        ("gpt-4o-mini-stream", "latency")}
    assert f"Alerts raised ({len(found)}):" in demo.stdout and "monitor logs" in demo.stdout
    monkeypatch.chdir(tmp_path)  # the other reading commands, in process
    for args in (("logs", "-n", "3"), ("report",), ("show", str(found[0]["probe_ids"][0]))):
        assert invoke(*args).exit_code == 0, args
    stored = len(json.loads(invoke("logs", "-n", "1000", "--json").output))
    again = invoke("demo")
    assert again.exit_code == 0 and "Starting afresh" in again.output
    assert len(json.loads(invoke("logs", "-n", "1000", "--json").output)) == stored


def test_demo_never_replaces_a_config_it_did_not_write(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "monitor.toml").write_text("[database]\n")
    result = invoke("demo")
    assert result.exit_code == 1
    assert "monitor.toml exists and was not written by `monitor demo`" in result.output
    assert (tmp_path / "monitor.toml").read_text() == "[database]\n"
    assert not (tmp_path / "monitor-demo.db").exists()


def test_sim_command_prints_its_address_first(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "sim", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    out = Lines(process.stdout)
    try:
        first = out.wait_for("listening on")
        assert out.text() == first
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)", first.strip())
        assert match, first
        with requests.get(f"{match.group(1)}/v1/models", timeout=5) as response:
            assert response.status_code == 200
            assert response.json()["object"] == "list"
    finally:
        process.terminate()
        process.wait(timeout=30)
        out.close()
