"""Read monitor.toml and .env into Settings, refusing anything doubtful with a precise ConfigError.

- Every error names the file, the key path (`targets[2].timeout`, `defaults.params.temperature`),
  what was expected and what was found, and never an API key's value.
- A value is checked where it is written, so a bad `[defaults]` entry is reported under `defaults`
  even when no target uses it. Rules that combine keys (what a provider needs, timeout against
  interval, the key's variable) are checked per target and reported under `targets[i]`.
- Layers merge as built-in defaults < `[defaults]` < `[[targets]]`; `params` merge key by key.
- Variables come from the environment, then the config file's .env, then ./.env: a .env never
  overrides the environment, and os.environ is never modified.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor import defaults
from monitor.alerting import AlertSettings
from monitor.config.alert_channels import CHANNEL_KEYS, resolve_channels
from monitor.config.checks import (
    _at,
    _Check,
    _database_url,
    _duration_ms,
    _hostnames,
    _integer,
    _Invalid,
    _read_keys,
    _timeout_ms,
)
from monitor.config.otel import otel_settings, read_otel
from monitor.config.quality import check_sets
from monitor.config.routes import check_routes, require_routes
from monitor.config.targets import (
    _DEFAULT_KEYS,
    _build_targets,
    _targets,
)
from monitor.domain import Settings
from monitor.errors import ConfigError, raw
from monitor.proxy.exchange import Route

_ALERT_KEYS: dict[str, _Check] = {
    **CHANNEL_KEYS,
    "open_after": _integer(1),
    "resolve_after": _integer(1),
    "cooldown": _duration_ms,
    "remind_every": lambda value: None if value is False else _timeout_ms(value),
    "group_wait": _duration_ms,
    "give_up_after": _timeout_ms,
    "maintenance": lambda value: value,  # read by alerts.maintenance, which knows the targets
}


def _alert_settings(section: dict[str, Any], env: Mapping[str, str],
                    path: str, target_names: list[str]) -> AlertSettings:
    from monitor.alerts.maintenance import parse_windows

    windows = parse_windows(section.get("maintenance", []), path, known_targets=target_names)
    renamed = {"cooldown": "cooldown_ms", "remind_every": "remind_every_ms",
               "group_wait": "group_wait_ms", "give_up_after": "give_up_after_ms"}
    plain = {renamed.get(k, k): v for k, v in section.items()
             if k not in (*CHANNEL_KEYS, "maintenance")}
    channels = resolve_channels(section, env)
    return AlertSettings(webhooks=channels["webhooks"], slack_webhooks=channels["slack_webhooks"],
                         apprise=channels["apprise"], maintenance=windows, **plain)


_DATABASE_KEYS: dict[str, _Check] = {"url": _database_url}


# `monitor serve` and `monitor run --http`: the names the dashboard answers to besides its
# address and loopback (a reverse proxy's or a DNS name), against DNS rebinding.
_WEB_KEYS: dict[str, _Check] = {"allowed_hosts": _hostnames}

# The top-level sections and the reader of each: a new section starts here.
_SECTIONS: dict[str, _Check] = {
    "database": lambda value: _read_keys(value, _DATABASE_KEYS),
    "defaults": lambda value: _read_keys(value, _DEFAULT_KEYS),
    "targets": _targets,
    "alerts": lambda value: _read_keys(value, _ALERT_KEYS),
    "retention": lambda value: _read_keys(value, {"raw": _timeout_ms}),
    "web": lambda value: _read_keys(value, _WEB_KEYS),
    "check_sets": check_sets,
    "otel": read_otel,
    "routes": check_routes,  # read by `monitor proxy` (load_proxy); other commands ignore it
}

# Reading the file and the environment.


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values  # ~5 ms that a directory without .env need not pay

    # `KEY` alone (no `=`) reads as None: it sets nothing.
    return {key: value for key, value in dotenv_values(path).items() if value is not None}


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        raise ConfigError(path, "", "a readable TOML file", raw(reason)) from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "a UTF-8 TOML file", raw("other bytes")) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, "", "valid TOML", raw(str(err))) from None


def _database(section: dict[str, Any], env: Mapping[str, str]) -> str:
    override = env.get("MONITOR_DATABASE_URL")
    if override:
        with _at("database.url (MONITOR_DATABASE_URL)"):
            return _database_url(override)
    url: str = section.get("url", defaults.DATABASE_URL)
    return url


def load(path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the config file and .env into Settings; raise ConfigError on anything doubtful."""
    return _load(path, environ)[0]


@dataclass(frozen=True)
class ProxySettings:
    """What `monitor proxy` runs on: the file's settings (database, retention; targets may be
    none) and its routes, at least one."""

    settings: Settings
    routes: tuple[Route, ...]


def load_proxy(path: str | None = None,
               environ: Mapping[str, str] | None = None) -> ProxySettings:
    """Read the config file like load(), and its [[routes]], of which there must be one."""
    settings, sections = _load(path, environ)
    try:
        routes = require_routes(sections.get("routes", ()))
    except _Invalid as err:
        raise ConfigError(settings.config_path, err.key, err.expected, err.got) from None
    return ProxySettings(settings, routes)


def _load(path: str | None, environ: Mapping[str, str] | None) -> tuple[Settings, dict[str, Any]]:
    base = dict(os.environ if environ is None else environ)
    cwd_dotenv = _read_dotenv(Path(".env"))
    config_path = (
        path
        or base.get("MONITOR_CONFIG")
        or cwd_dotenv.get("MONITOR_CONFIG")
        or defaults.CONFIG_PATH
    )
    document = _read_toml(config_path)
    env = {**cwd_dotenv, **_read_dotenv(Path(config_path).parent / ".env"), **base}
    try:
        sections = _read_keys(document, _SECTIONS)
        database_url = _database(sections.get("database", {}), env)
        targets = _build_targets(sections.get("defaults", {}), sections.get("targets", []), env,
                                 sections.get("check_sets", {}))
        alerts = _alert_settings(sections.get("alerts", {}), env, config_path,
                                 [t.name for t in targets])
        otel = otel_settings(sections.get("otel"), env)
    except _Invalid as err:
        raise ConfigError(config_path, err.key, err.expected, err.got) from None
    retention = sections.get("retention", {})
    settings = Settings(config_path=config_path, database_url=database_url, targets=targets,
                        alerts=alerts,
                        raw_retention_ms=retention.get("raw", defaults.RAW_RETENTION_MS),
                        allowed_hosts=sections.get("web", {}).get("allowed_hosts", ()),
                        otel=otel)
    return settings, sections
