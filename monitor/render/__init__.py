"""Renderers of the report document (docs/report.md) and of /metrics. They take plain data and
return text, so the CLI, the web server and the tests call them the same way."""

from monitor.render.csvout import render_csv
from monitor.render.dashboard import render_dashboard
from monitor.render.html import render_html
from monitor.render.metrics import exposition_registry, render_metrics
from monitor.render.table import render_table

__all__ = ["exposition_registry", "render_csv", "render_dashboard", "render_html",
           "render_metrics", "render_table"]
