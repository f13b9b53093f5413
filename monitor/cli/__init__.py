"""The `monitor` command. Thin: parse options, call one function, render.

Exit codes: 0 success; 1 a probe failed (it is still stored) or a runtime error;
2 usage, configuration or schema errors.

Each command family has its module (probing, inspect, alerts, reports, replay, admin); they import
the heavy subsystems (web, replay, sim) inside the commands that need them, so `monitor --help`
loads none of them. A MonitorError becomes one line in one place: common.MonitorGroup.
"""

from __future__ import annotations

import click

from monitor.cli import admin, alerts, inspect, probing, replay, reports
from monitor.cli.common import MonitorGroup


@click.group(cls=MonitorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="monitor")
def cli() -> None:
    """Watch hosted LLM APIs for drift: canary probes, full-fidelity history, alerts."""


for _module in (probing, inspect, admin, alerts, reports, replay):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """The console script (`monitor = "monitor.cli:main"`)."""
    cli()
