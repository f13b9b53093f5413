"""Renderers of the report document (docs/report.md) and of /metrics. They take plain data and
return text, so the CLI, the web server and the tests call them the same way.

The names below are loaded on first use: `monitor status` needs `render.text` only, and the
others would cost it prometheus_client and the HTML renderers at every start."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.render.csvout import render_csv
    from monitor.render.dashboard import render_dashboard
    from monitor.render.html import render_html
    from monitor.render.metrics import exposition_registry, render_metrics
    from monitor.render.table import render_table

__all__ = ["exposition_registry", "render_csv", "render_dashboard", "render_html",
           "render_metrics", "render_table"]

_HOMES = {"exposition_registry": "metrics", "render_csv": "csvout",
          "render_dashboard": "dashboard", "render_html": "html", "render_metrics": "metrics",
          "render_table": "table"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
