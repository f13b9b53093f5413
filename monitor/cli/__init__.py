"""The `monitor` command. Thin: parse options, call one function, render.

Exit codes: 0 success; 1 a probe failed (it is still stored) or a runtime error;
2 usage, configuration or schema errors.

Each command family has its module (probing, inspect, alerts, reports, replay, admin, proxy). At the
top they import click and the standard library only; everything else (the store and SQLAlchemy,
the daemon, web, replay, sim) is imported inside the command that needs it, so `monitor --help`
and `--version` start as fast as click does (tests/test_architecture.py holds them to it). A
MonitorError becomes one line in one place: common.MonitorGroup.
"""

from __future__ import annotations

import click

from monitor import __version__
from monitor.cli import admin, alerts, inspect, probing, proxy, replay, reports
from monitor.cli.common import MonitorGroup, ends_with_the_command


@click.group(cls=MonitorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__)
def cli() -> None:
    """Watch hosted LLM APIs for drift: canary probes, full-fidelity history, alerts."""


for _module in (probing, inspect, admin, alerts, reports, replay, proxy):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """The console script (`monitor = "monitor.cli:main"`)."""
    ends_with_the_command()
    cli()
