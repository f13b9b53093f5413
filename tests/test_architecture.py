"""The one-way data flow, enforced by walking imports (STYLE.md section 3)."""

from __future__ import annotations

import ast
import gc
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli.common import loading
from monitor.sim import SimClient, Simulator
from tests.conftest import write_config

PACKAGE = Path(__file__).resolve().parents[1] / "monitor"


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules(pattern: str) -> list[Path]:
    return sorted(PACKAGE.glob(pattern))


@pytest.mark.parametrize(
    ("pattern", "forbidden"),
    [
        pytest.param("probe/*.py", ("monitor.store", "sqlalchemy"), id="probe-knows-no-database"),
        pytest.param("probe/*.py", ("monitor.otel", "opentelemetry"), id="probe-knows-no-otel"),
        pytest.param("store/*.py", ("monitor.otel", "opentelemetry"), id="store-knows-no-otel"),
        pytest.param("otel/attributes.py", ("opentelemetry", "monitor.store", "requests"),
                     id="otel-attributes-are-pure"),
        pytest.param("probe/completion.py", ("requests", "monitor.store"), id="parser-is-pure"),
        pytest.param("probe/headers.py", ("requests", "monitor.store"), id="headers-are-pure"),
        pytest.param("probe/anthropic.py", ("requests", "monitor.store"),
                     id="anthropic-parser-is-pure"),
        pytest.param("store/*.py", ("requests", "monitor.probe"), id="store-knows-no-http"),
        pytest.param("detect/*.py", ("requests", "sqlalchemy", "monitor.store", "monitor.clock"),
                     id="detectors-are-pure"),
        pytest.param("render/*.py", ("monitor.store", "sqlalchemy", "requests"),
                     id="renderers-take-plain-data"),
    ],
)
def test_forbidden_imports(pattern: str, forbidden: tuple[str, ...]) -> None:
    files = modules(pattern)
    assert files, pattern
    for path in files:
        bad = [n for n in imports_of(path) if n.startswith(forbidden)]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_domain_depends_on_nothing_but_secrets_and_alerting() -> None:
    own = {n for n in imports_of(PACKAGE / "domain.py") if n.startswith("monitor")}
    assert own <= {"monitor.secrets", "monitor.secrets.Secret", "monitor.alerting",
                   "monitor.alerting.AlertSettings"}


def test_snapshot_depends_on_nothing() -> None:
    assert not [n for n in imports_of(PACKAGE / "snapshot.py") if n.startswith("monitor")]


def test_alerting_depends_on_nothing_but_secrets() -> None:
    own = {n for n in imports_of(PACKAGE / "alerting.py") if n.startswith("monitor")}
    assert own <= {"monitor.secrets", "monitor.secrets.Secret"}


def test_only_providers_reads_a_secret_value() -> None:
    readers = [
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if "api_key.value" in p.read_text()
    ]
    assert readers == ["probe/providers.py"]


def test_only_the_channels_read_a_notification_url() -> None:
    """A webhook or Apprise URL is read to hash it into the channel's id and to send: nowhere
    else can it reach a row, a log line or a message."""
    readers = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                     if "url.value" in p.read_text())
    assert readers == ["alerting.py", "alerts/channels.py"]


def own_imports(path: Path) -> set[str]:
    """The monitor modules `path` imports, as module names (`from monitor import x` counted as
    monitor.x, so a package import and a module import read the same)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("monitor"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("monitor"):
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_detectors_import_only_the_domain_and_each_other() -> None:
    for path in modules("detect/*.py"):
        bad = [n for n in own_imports(path)
               if not n.startswith(("monitor.domain", "monitor.detect"))]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_the_simulator_stands_alone() -> None:
    for path in modules("sim/*.py"):
        bad = [n for n in own_imports(path)
               if not n.startswith(("monitor.sim", "monitor.errors", "monitor.httpd"))]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_the_http_server_depends_on_nothing_but_defaults() -> None:
    own = own_imports(PACKAGE / "httpd.py")
    assert all(n.startswith("monitor.defaults") for n in own), own


def test_only_the_daemon_and_the_cli_wire_parts_together() -> None:
    """Nothing below the wiring imports it: daemon/ is used by cli/ (and demo), cli/ by no one."""
    for path in PACKAGE.rglob("*.py"):
        where = path.relative_to(PACKAGE).as_posix()
        own = own_imports(path)
        if not where.startswith("cli/") and where not in ("__main__.py",):
            assert not [n for n in own if n.startswith("monitor.cli")], where
        if not where.startswith(("cli/", "daemon/")) and where != "demo.py":
            assert not [n for n in own if n.startswith("monitor.daemon")], where


def test_the_cli_loads_no_heavy_subsystem_until_a_command_needs_it() -> None:
    code = ("import sys, monitor.cli; print(sorted(m for m in sys.modules if m.startswith("
            "('monitor.web', 'monitor.replay', 'monitor.sim', 'monitor.store', 'monitor.daemon', "
            "'monitor.alerts', 'monitor.probe', 'monitor.health', 'monitor.render', "
            "'monitor.otel', 'opentelemetry'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("option", ["--help", "--version"])
def test_help_and_version_load_no_database_or_http_library(option: str) -> None:
    """`monitor --help` and `--version` cost about what click costs (bench/cli_start.py): the
    modules that define commands import SQLAlchemy, Alembic and requests inside them."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'sqlalchemy', 'alembic', 'requests', 'apscheduler', 'prometheus_client', "
            "'apprise'})))\n"
            f"sys.argv = ['monitor', {option!r}]\n"
            "from monitor.cli import main\n"
            "main()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_top_level_stays_small_and_modules_stay_readable() -> None:
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 15, top
    # The schema reads best whole; every other module owns one noun.
    long = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert set(long) <= {"store/schema.py"}, long


# What `monitor status`, `alerts` and `probe` must not load: they read and write through
# store/schema.py's Core tables (docs/benchmarks.md, "Command start-up").
HEAVY = ("sqlalchemy.orm", "sqlalchemy.dialects.postgresql", "monitor.store.models", "alembic",
         "apscheduler", "jsonschema", "monitor.daemon.steps", "monitor.alerts.engine",
         "monitor.web", "monitor.replay", "monitor.sim")


def test_status_alerts_and_probe_load_no_orm_or_daemon(
        tmp_path: Path, sqlite_template: Path, sim: SimClient, sim_server: Simulator) -> None:
    """Each as its own process (the console script's `main`) on SQLite: a probe stored, then
    the status that folds it and the alert list. What their imports made is frozen, left out
    of the collector's scans (cli.common.loading)."""
    database = tmp_path / "monitor.db"
    shutil.copy(sqlite_template, database)
    config = write_config(tmp_path / "monitor.toml", [
        {"name": "sim", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
         "model": "gpt-4o"}], f"sqlite:///{database}")
    for command in ("probe", "status", "alerts"):
        code = ("import atexit, gc, json, sys\n"
                f"atexit.register(lambda: print(json.dumps([sorted(m for m in sys.modules if "
                f"m.startswith({HEAVY!r})), gc.get_freeze_count() > 0])))\n"
                f"sys.argv = ['monitor', {command!r}, '--config', {str(config)!r}]\n"
                "from monitor.cli import main\n"
                "main()\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=tmp_path, check=False)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1]) == [[], True], command


def test_loading_in_process_pauses_the_collector_and_freezes_nothing() -> None:
    """Where commands run in-process (tests, CliRunner) the collector resumes as it was, and
    nothing is frozen: that process's garbage must still be collected."""
    frozen = gc.get_freeze_count()
    assert gc.isenabled()
    with loading():
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen
