"""An API key never leaves memory: not into the database, logs, output, errors or reprs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from monitor import config
from monitor.cli import cli
from monitor.sim import SimClient, Simulator
from monitor.store import db
from monitor.store.models import Base
from tests.conftest import TEST_KEY, write_config


def _dump_database(url: str) -> str:
    engine = db.create(url)
    try:
        with engine.connect() as connection:
            rows = [
                repr(row)
                for table in Base.metadata.sorted_tables
                for row in connection.execute(text(f'SELECT * FROM "{table.name}"'))
            ]
    finally:
        engine.dispose()
    return "\n".join(rows)


def test_the_key_appears_nowhere(
    tmp_path: Path,
    sim_server: Simulator,
    sim: SimClient,
    database_url: str,
    engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim.update(api_keys=[TEST_KEY])
    path = write_config(
        tmp_path / "monitor.toml",
        [
            {"name": "openai", "provider": "openai", "base_url": f"{sim_server.url}/v1",
             "model": "gpt-4o", "api_key_env": "SECRET_KEY"},
            {"name": "azure", "provider": "azure", "base_url": sim_server.url,
             "deployment": "d", "api_version": "2024-10-21", "api_key_env": "SECRET_KEY"},
            {"name": "broken", "provider": "openai", "base_url": f"{sim_server.url}/v1",
             "model": "sim-500", "api_key_env": "SECRET_KEY"},
        ],
        database_url,
    )
    (tmp_path / ".env").write_text(f"SECRET_KEY={TEST_KEY}\n")
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    outputs = [
        runner.invoke(cli, ["probe", "-c", str(path)], catch_exceptions=False).output,
        runner.invoke(cli, ["probe", "--json", "-c", str(path)], catch_exceptions=False).output,
        runner.invoke(cli, ["config", "check", "-c", str(path)], catch_exceptions=False).output,
        runner.invoke(cli, ["config", "check", "--json", "-c", str(path)]).output,
    ]
    assert "openai" in outputs[0] and " ok " in outputs[0]  # the key was really used
    settings = config.load(str(path))
    haystacks = {
        "cli output": "\n".join(outputs),
        "logs": caplog.text,
        "database": _dump_database(database_url),
        "reprs": repr(settings) + str(settings.targets),
    }
    if database_url.startswith("sqlite"):
        file = Path(database_url.removeprefix("sqlite:///"))
        haystacks["database file"] = "".join(
            p.read_bytes().decode("latin-1") for p in file.parent.glob(file.name + "*")
        )
    for where, haystack in haystacks.items():
        assert TEST_KEY not in haystack, f"the API key leaked into the {where}"
        assert TEST_KEY[8:24] not in haystack, f"part of the API key leaked into the {where}"
