"""OpenTelemetry export (`[otel]`): `monitor run` sends each probe it stores as a span that
follows the GenAI semantic conventions, and the conventions' duration and token histograms,
to an OTLP/HTTP collector.

    attributes.py   a probe as span and metric attributes (pure; no OpenTelemetry import)
    export.py       the SDK: batched spans, periodic metrics, failures counted and logged

Importing this package costs nothing: the SDK (the optional `otel` extra) is imported by
`start()`, and only when [otel] is configured. The daemon wires what `start()` returns; the
probe and the store know nothing of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.domain import Settings
from monitor.errors import ConfigError, raw

if TYPE_CHECKING:
    from monitor.otel.export import Telemetry

INSTALL = "pip install 'monitor[otel]'"


def start(settings: Settings) -> Telemetry | None:
    """The exporter [otel] asks for, running; None without the section. ConfigError, saying
    what to install, when the `otel` extra is missing."""
    if settings.otel is None:
        return None
    try:
        from monitor.otel.export import Telemetry
    except ImportError as error:
        missing = error.name or "opentelemetry"
        raise ConfigError(settings.config_path, "otel",
                          f"the OpenTelemetry packages installed ({INSTALL})",
                          raw(f"{missing} missing")) from None
    return Telemetry(settings.otel)
