"""Fixtures: the simulator over loopback, real SQLite files and a real PostgreSQL database.

PostgreSQL is never skipped: if it cannot be reached the run fails, naming the URL it tried
(set MONITOR_TEST_POSTGRES_URL to point elsewhere).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, make_url, text

from monitor import config
from monitor.daemon import Daemon
from monitor.domain import Settings, Target
from monitor.sim import SimClient, Simulator
from monitor.store import db
from monitor.store.models import Base
from monitor.store.records import Recorder
from monitor.store.spool import Spool
from tests.proxy import Proxy

POSTGRES_URL = os.environ.get(
    "MONITOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEST_KEY = "sk-" "test-3f9c2b7e1d4a6f8e0c5b9a7d2e4f6a8c"  # fake; the secrets test hunts for it


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MONITOR_*, OPENAI_*, AZURE_*, ANTHROPIC_* or OTEL_* (the OpenTelemetry SDK's) from the
    developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("MONITOR_", "OPENAI_", "AZURE_", "ANTHROPIC_", "OTEL_")):
            monkeypatch.delenv(name)


# --- the simulator --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sim_server() -> Iterator[Simulator]:
    with Simulator(seed=1234) as server:
        yield server


@pytest.fixture
def sim(sim_server: Simulator) -> Iterator[SimClient]:
    """The shared simulator, reset to its default scenario for each test."""
    client = SimClient(sim_server.url)
    client.reset()
    yield client
    client.reset()


# --- databases ------------------------------------------------------------------------------


def _postgres_admin() -> psycopg.Connection[Any]:
    url = db.normalize_url(POSTGRES_URL).replace("postgresql+psycopg://", "postgresql://")
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required and unreachable at {POSTGRES_URL}: {exc}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this test session, migrated to head, dropped at the end."""
    name = f"monitor_test_{uuid.uuid4().hex[:10]}"
    with _postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    db.upgrade(url)
    yield url
    with _postgres_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrated once; each test gets a copy, which is much faster than migrating each time."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    db.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "monitor.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    empty_postgres(url)
    return url


def empty_postgres(url: str) -> None:
    """Flush beforewards, like rq's tests: every table emptied, ids restarted."""
    engine = db.create(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.open_store(database_url)
    yield engine
    # A connection still checked out is a leak in the code under test.
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    engine.dispose()


# --- configuration --------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: Path, targets: list[dict[str, Any]], database_url: str = "",
                 alerts: dict[str, Any] | None = None) -> Path:
    lines = []
    if database_url:
        lines += ["[database]", f"url = {toml_value(database_url)}", ""]
    if alerts:
        lines.append("[alerts]")
        lines += [f"{key} = {toml_value(value)}" for key, value in alerts.items()]
        lines.append("")
    for target in targets:
        lines.append("[[targets]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in target.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(
    tmp_path: Path, sim_server: Simulator, monkeypatch: pytest.MonkeyPatch
) -> MakeSettings:
    """Settings from a real monitor.toml whose targets point at the simulator by default."""
    monkeypatch.chdir(tmp_path)  # so a developer's ./.env cannot feed the test

    def make(*targets: dict[str, Any], database_url: str = "",
             alerts: dict[str, Any] | None = None, **environ: str) -> Settings:
        resolved = []
        for target in targets or ({"name": "canary"},):
            entry = {"provider": "openai-compatible", **target}
            if entry["provider"] != "azure":  # Azure routes by deployment, not model
                entry.setdefault("model", "gpt-4o")
            entry.setdefault("base_url", f"{sim_server.url}/v1")
            resolved.append(entry)
        path = write_config(tmp_path / "monitor.toml", resolved, database_url, alerts)
        return config.load(str(path), environ=environ)

    return make


@pytest.fixture
def make_target(make_settings: MakeSettings) -> Callable[..., Target]:
    """One Target (overrides as keyword arguments), resolved through the real config loader."""

    def make(**overrides: Any) -> Target:
        environ = overrides.pop("environ", {})
        return make_settings({"name": "canary", **overrides}, **environ).targets[0]

    return make


@pytest.fixture
def postgres_through_proxy(postgres_url: str) -> Iterator[tuple[str, Proxy]]:
    """The session's PostgreSQL database, emptied, reached through a proxy the test can cut
    (a database outage on demand)."""
    empty_postgres(postgres_url)
    url = make_url(postgres_url)
    if url.host is None:
        pytest.fail(f"the outage tests reach PostgreSQL over TCP; {POSTGRES_URL} names no host")
    proxy = Proxy(url.host, url.port or 5432)
    yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), proxy
    proxy.close()


@pytest.fixture
def make_daemon(tmp_path: Path, make_settings: MakeSettings) -> Iterator[Any]:
    """Daemons on a given engine with targets pointing at the simulator, closed afterwards."""
    made: list[Daemon] = []

    def make(engine: Engine, *targets: dict[str, Any]) -> Daemon:
        settings = make_settings(*targets)
        daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"))
        daemon.prober.register(settings.targets)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()
