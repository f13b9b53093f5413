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
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from monitor import defaults
from monitor.alerting import AlertSettings
from monitor.config.checks import (
    _NOTHING,
    _array_of,
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
from monitor.config.quality import check_sets
from monitor.config.targets import (
    _DEFAULT_KEYS,
    _build_targets,
    _targets,
)
from monitor.domain import Settings
from monitor.errors import ConfigError, raw


def _webhook_url(value: object) -> str:
    """An http(s) URL, or "env:NAME" to read it from the environment (they carry tokens)."""
    if isinstance(value, str) and value.startswith("env:"):
        return value
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        # The URL may hold a token: show only its shape.
        got = raw("a string that is not one") if isinstance(value, str) else value
        raise _Invalid('an http(s) URL or "env:VARIABLE"', got)
    return value  # type: ignore[return-value]  # checked by urlsplit above


_webhook_urls = _array_of(_webhook_url,
                          'an array of URLs like ["https://hooks.example.com/monitor"]')


_ALERT_KEYS: dict[str, _Check] = {
    "webhooks": _webhook_urls,
    "slack_webhooks": _webhook_urls,
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

    def resolve(key: str) -> tuple[str, ...]:
        urls = []
        for index, url in enumerate(section.get(key, ())):
            if url.startswith("env:"):
                name = url[4:]
                if not env.get(name):
                    raise _Invalid(f"environment variable {name} to be set to a webhook URL",
                                   _NOTHING, f"alerts.{key}[{index}]")
                with _at(f"alerts.{key}[{index}] ({name})"):
                    url = _webhook_url(env[name])
            urls.append(url)
        return tuple(urls)

    windows = parse_windows(section.get("maintenance", []), path, known_targets=target_names)
    renamed = {"cooldown": "cooldown_ms", "remind_every": "remind_every_ms",
               "group_wait": "group_wait_ms", "give_up_after": "give_up_after_ms"}
    plain = {renamed.get(k, k): v for k, v in section.items()
             if k not in ("webhooks", "slack_webhooks", "maintenance")}
    return AlertSettings(webhooks=resolve("webhooks"), slack_webhooks=resolve("slack_webhooks"),
                         maintenance=windows, **plain)


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
    except _Invalid as err:
        raise ConfigError(config_path, err.key, err.expected, err.got) from None
    retention = sections.get("retention", {})
    return Settings(config_path=config_path, database_url=database_url, targets=targets,
                    alerts=alerts, raw_retention_ms=retention.get("raw", defaults.RAW_RETENTION_MS),
                    allowed_hosts=sections.get("web", {}).get("allowed_hosts", ()))
