"""The one-way data flow, enforced by walking imports (STYLE.md section 3)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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
        pytest.param("probe/completion.py", ("requests", "monitor.store"), id="parser-is-pure"),
        pytest.param("probe/headers.py", ("requests", "monitor.store"), id="headers-are-pure"),
        pytest.param("store/*.py", ("requests", "monitor.probe"), id="store-knows-no-http"),
        pytest.param("sim/*.py", ("monitor.store", "monitor.probe"), id="sim-stands-alone"),
    ],
)
def test_forbidden_imports(pattern: str, forbidden: tuple[str, ...]) -> None:
    files = modules(pattern)
    assert files, pattern
    for path in files:
        bad = [n for n in imports_of(path) if n.startswith(forbidden)]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_domain_depends_on_nothing_but_secrets() -> None:
    own = {n for n in imports_of(PACKAGE / "domain.py") if n.startswith("monitor")}
    assert own <= {"monitor.secrets", "monitor.secrets.Secret"}


def test_only_providers_reads_a_secret_value() -> None:
    readers = [
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if "api_key.value" in p.read_text()
    ]
    assert readers == ["probe/providers.py"]
