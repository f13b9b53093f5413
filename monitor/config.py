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

import copy
import difflib
import hashlib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

from monitor import defaults
from monitor.domain import AlertSettings, DetectionThresholds, Provider, Settings, Target
from monitor.durations import format_ms, parse_ms
from monitor.errors import ConfigError, raw
from monitor.secrets import Secret, mask

_Check = Callable[[object], Any]

_NOTHING = raw("nothing")
_DAY_MS = 86_400_000


class _Invalid(Exception):
    """A wrong value; `key` grows outwards through _at() until load() adds the file name."""

    def __init__(self, expected: str, got: object, key: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        if isinstance(got, bool):
            got = raw("true" if got else "false")  # as TOML spells it, not Python
        elif isinstance(got, dict):
            got = raw("a table")  # summarised: it can be long and is rarely the useful part
        self.got = got
        self.key = key


@contextmanager
def _at(key: str) -> Iterator[None]:
    """Prefix `key` to the key path of any _Invalid raised inside."""
    try:
        yield
    except _Invalid as err:
        if not err.key:
            err.key = key
        elif err.key.startswith("["):
            err.key = key + err.key
        else:
            err.key = f"{key}.{err.key}"
        raise


def _choices(options: tuple[str, ...]) -> str:
    return "one of " + ", ".join(f'"{option}"' for option in options)


# Checks for single values: each returns the value as Target holds it, or raises _Invalid.


def _table(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid("a table", value)
    return value


def _read_keys(value: object, checks: Mapping[str, _Check]) -> dict[str, Any]:
    """Check each key of a table with its rule; a key without a rule is refused."""
    out: dict[str, Any] = {}
    for key, item in _table(value).items():
        check = checks.get(key)
        if check is None:
            # Above difflib's 0.6 so that "alerts" is not offered "targets".
            close = difflib.get_close_matches(key, list(checks), n=1, cutoff=0.65)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            accepted = ", ".join(sorted(checks))
            raise _Invalid(f"a known key ({accepted})", raw(f"an unknown key{hint}"), key)
        with _at(key):
            out[key] = check(item)
    return out


def _require(table: Mapping[str, Any], key: str, expected: str) -> Any:
    if table.get(key) is None:
        raise _Invalid(expected, _NOTHING, key)
    return table[key]


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid("a string", value)
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("a non-empty string", value)
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false", value)
    return value


def _one_of(options: tuple[str, ...]) -> _Check:
    def check(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise _Invalid(_choices(options), value)
        return value

    return check


# The largest integer a config value may hold: what a BIGINT column (and SQLite's INTEGER)
# stores, so that a value that passes here cannot overflow on its way to the database.
_INT_MAX = 2**63 - 1


def _integer(minimum: int | None = None, maximum: int = _INT_MAX,
             maximum_note: str = "") -> _Check:
    expected = "an integer" if minimum is None else f"an integer of at least {minimum}"
    too_big = f"an integer of at most {maximum}{maximum_note}"

    def check(value: object) -> int:
        # TOML booleans are Python ints; `true` where a number belongs is a mistake.
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(expected, value)
        if minimum is not None and value < minimum:
            raise _Invalid(expected, value)
        if value > maximum:
            raise _Invalid(too_big, value)
        return value

    return check


def _number(low: float, high: float) -> _Check:
    expected = f"a number from {low:g} to {high:g}"

    def check(value: object) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Invalid(expected, value)
        if not low <= value <= high:  # also refuses nan
            raise _Invalid(expected, value)
        return value

    return check


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME_EXPECTED = 'a name like "gpt-4o" (letters, digits, ".", "_", "-"; used on the command line)'


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _Invalid(_NAME_EXPECTED, value)
    return value


def _provider(value: object) -> Provider:
    return Provider(_one_of(tuple(Provider))(value))


_URL_EXPECTED = "an http(s) URL"
_NO_CREDENTIALS = (f"{_URL_EXPECTED} without credentials in it (the key belongs in the "
                   "environment variable api_key_env names)")
# Query parameters that carry a credential, after lower-casing and dropping "-" and "_":
# api-key, api_key, apikey, key, token, access_token, sig, signature, password, secret, ...
_CREDENTIAL_PARAM = re.compile(r"key|token|secret|passw|pwd|auth|sig|credential|session")


def masked_url(text: str) -> str:
    """`text` with whatever may be a credential in a URL masked: the userinfo, every query
    value and the fragment. For messages about a URL that was refused; it need not parse."""
    text = re.sub(r"//[^/?#]*@", "//****@", text, count=1)
    text, hashed, _ = text.partition("#")
    base, question, query = text.partition("?")
    if question:
        base += "?" + "&".join(
            f"{part.partition('=')[0]}=****" if "=" in part else "****"
            for part in re.split(r"[&;]", query))
    return base + ("#****" if hashed else "")


def _http_url(value: object) -> str:
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:
        parts = None
    got = raw(repr(masked_url(value))) if isinstance(value, str) else value
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(f'{_URL_EXPECTED} like "https://api.openai.com/v1"', got)
    # A key in the URL would be printed by `config check`, logged and stored with the
    # target's configuration; it belongs in the environment, which none of them shows.
    names = [re.sub(r"[-_]", "", name.partition("=")[0].lower())
             for name in re.split(r"[&;]", parts.query)]
    if "@" in parts.netloc or any(_CREDENTIAL_PARAM.search(name) for name in names if name):
        raise _Invalid(_NO_CREDENTIALS, got)
    # A query or fragment would end up in the middle of the URL once the path is appended.
    if parts.query or parts.fragment:
        raise _Invalid(f"{_URL_EXPECTED} without a query or fragment", got)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port is not None and not 1 <= port <= 65535:
        raise _Invalid(f"{_URL_EXPECTED} with a port from 1 to 65535", got)
    return str(value).rstrip("/")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_LINE_ENDS = {"\n": "a newline", "\r": "a carriage return"}


def control_character(value: str) -> str | None:
    """What the first control character in `value` is ("a newline", "a tab", ...), or None.
    Names the character, never shows the value: the value is usually a secret."""
    for char in value:
        if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            named = {**_LINE_ENDS, "\t": "a tab"}
            return named.get(char, f"a control character (U+{ord(char):04X})")
    return None


def _env_name(value: object) -> str:
    if isinstance(value, str) and _ENV_NAME.fullmatch(value):
        return value
    # People sometimes paste the key itself here: show no more of it than a masked form.
    got = raw(f"'{mask(value)}'") if isinstance(value, str) else value
    expected = 'the name of an environment variable like "OPENAI_API_KEY", not the key itself'
    raise _Invalid(expected, got)


_DURATION_EXPECTED = 'a duration like "30s"'
# No duration monitor takes is longer than this; a longer one would push dates computed from
# it out of the calendar (a year after 9999), far from where it was written.
_LONGEST = "3650d"
_LONGEST_MS = 3650 * _DAY_MS


def _duration_ms(value: object) -> int:
    ms = parse_ms(value) if isinstance(value, str) else None
    if ms is None:
        raise _Invalid(_DURATION_EXPECTED, value)
    if ms > _LONGEST_MS:
        raise _Invalid(f'a duration of at most "{_LONGEST}"', value)
    return ms


def _duration_between(low: str, high: str) -> _Check:
    low_ms, high_ms = parse_ms(low), parse_ms(high)
    assert low_ms is not None and high_ms is not None
    expected = f'a duration from "{low}" to "{high}"'

    def check(value: object) -> int:
        ms = _duration_ms(value)
        if not low_ms <= ms <= high_ms:
            raise _Invalid(expected, value)
        return ms

    return check


# A probe at least every day (a canary that looks less often sees nothing in time) and at
# most every second (the scheduler's resolution).
_interval_ms = _duration_between("1s", "1d")
# A probe waits at least 100 ms (a local server on loopback answers in less; a remote API
# would fail on its TLS handshake) and at most ten minutes (longer than any API keeps a
# request open, and the probe holds a worker all along).
_probe_timeout_ms = _duration_between("100ms", "10m")


def _timeout_ms(value: object) -> int:
    ms = _duration_ms(value)
    if ms <= 0:
        raise _Invalid('a duration longer than "0s"', value)
    return ms


_ROLES = ("system", "user", "assistant", "developer", "tool")
_MESSAGE_KEYS: dict[str, _Check] = {"role": _one_of(_ROLES), "content": _string}


def _messages(value: object) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value:
        expected = 'a non-empty array of tables like { role = "user", content = "..." }'
        raise _Invalid(expected, value)
    messages = []
    for index, item in enumerate(value):
        with _at(f"[{index}]"):
            message = _read_keys(item, _MESSAGE_KEYS)
            _require(message, "role", _choices(_ROLES))
            _require(message, "content", "a string")
        messages.append(message)
    return tuple(messages)


def _stop(value: object) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) <= 4 and all(isinstance(v, str) for v in value):
        return value
    raise _Invalid("a string or an array of up to 4 strings", value)


def _is_json(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)  # TOML allows nan and inf; JSON does not
    if isinstance(value, str | int):
        return True
    if isinstance(value, list):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(_is_json(item) for item in value.values())
    return False  # TOML dates and times


def _json_value(value: object) -> object:
    """Pass an unknown parameter through untouched, provided it can be sent as JSON."""
    if not _is_json(value):
        raise _Invalid("a JSON value (string, number, boolean, array or table)", value)
    return value


_CAP_KEYS = ("max_completion_tokens", "max_tokens")

# Parameters monitor knows, checked so a typo'd value fails here rather than as a 400 every 5m.
_PARAM_CHECKS: dict[str, _Check] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "seed": _integer(),
    "n": _integer(1),
    "max_completion_tokens": _integer(1),
    "max_tokens": _integer(1),
    "stop": _stop,
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "reasoning_effort": _one_of(("minimal", "low", "medium", "high", "none")),
}

# Parts of the request monitor builds from its own keys; a second way to set them would conflict.
_PARAM_ELSEWHERE = {
    "model": "no model in params (use the model key)",
    "messages": "no messages in params (use the messages key)",
    "stream": "no stream in params (use the stream key)",
    "stream_options": "no stream_options in params (use the stream key; monitor sets them)",
}


def _params(value: object) -> dict[str, Any]:
    params = {}
    for key, item in _table(value).items():
        with _at(key):
            if key in _PARAM_ELSEWHERE:
                raise _Invalid(_PARAM_ELSEWHERE[key], item)
            params[key] = _PARAM_CHECKS.get(key, _json_value)(item)
    if all(key in params for key in _CAP_KEYS):
        # OpenAI refuses a request with both.
        raise _Invalid("max_completion_tokens or max_tokens, not both", raw("both"))
    return params


_DATABASE_URL = re.compile(r"sqlite:///.+|postgresql(\+\w+)?://.+")
_POSTGRES_DRIVERS = ("postgresql", "postgresql+psycopg")  # psycopg 3 is the one monitor ships


def _database_url(value: object) -> str:
    # A PostgreSQL URL may carry a password; keep it out of the message.
    got = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", value) if isinstance(value, str) else value
    if not isinstance(value, str) or not _DATABASE_URL.fullmatch(value):
        expected = ('a SQLAlchemy URL like "sqlite:///monitor.db" or '
                    '"postgresql+psycopg://user@host/monitor"')
        raise _Invalid(expected, got)
    scheme = value.partition("://")[0]
    if scheme.startswith("postgresql"):
        if scheme not in _POSTGRES_DRIVERS:
            raise _Invalid('a PostgreSQL URL with the psycopg driver ("postgresql://" or '
                           '"postgresql+psycopg://")', got)
        try:
            port = urlsplit(value).port
        except ValueError:
            port = 0
        if port is not None and not 1 <= port <= 65535:
            raise _Invalid("a PostgreSQL URL with a port from 1 to 65535", got)
    return value


def check_database_url(value: str, where: str) -> str:
    """A database URL given outside the config file (`--database`), checked as the file's."""
    try:
        return _database_url(value)
    except _Invalid as err:
        raise ConfigError(where, "", err.expected, err.got) from None


def _positive_number(value: object) -> float:
    if (not isinstance(value, int | float) or isinstance(value, bool) or not value > 0
            or not math.isfinite(value)):
        raise _Invalid("a number greater than 0", value)
    return float(value)


def _fraction(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1:
        raise _Invalid("a number between 0 and 1", value)
    return float(value)


def _threshold_check(name: str, annotation: str) -> _Check:
    """The check of one DetectionThresholds field, from its name and type."""
    check: _Check
    if name.endswith("_ms"):
        check = _duration_ms
    elif annotation.startswith("int"):
        check = _integer(1)
    elif name.endswith(("p_value", "fraction", "error_rate", "min_change")):
        check = _fraction
    else:
        check = _positive_number
    if "None" in annotation:  # optional limits: `false` turns one off again under a target
        return lambda value: None if value is False else check(value)
    return check


# `detect` keys as written in the file: a duration field loses its `_ms` ("24h", not ms).
_DETECT_FIELDS = {f.name.removesuffix("_ms"): f for f in fields(DetectionThresholds)}
_DETECT_KEYS: dict[str, _Check] = {
    key: _threshold_check(f.name, str(f.type)) for key, f in _DETECT_FIELDS.items()
}


def _detect(value: object) -> dict[str, Any]:
    return _read_keys(value, _DETECT_KEYS)


def _thresholds(layers: list[dict[str, Any]]) -> DetectionThresholds:
    """Merge `detect` tables key by key, [defaults] under the target's own."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return DetectionThresholds(**{_DETECT_FIELDS[key].name: v for key, v in merged.items()})


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


def _webhook_urls(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Invalid('an array of URLs like ["https://hooks.example.com/monitor"]', value)
    urls = []
    for index, item in enumerate(value):
        with _at(f"[{index}]"):
            urls.append(_webhook_url(item))
    return tuple(urls)


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


# Every key a target accepts, with the check of its value alone: a new key starts here. Rules
# that combine keys live in _build_target.
_TARGET_KEYS: dict[str, _Check] = {
    "name": _name,
    "provider": _provider,
    "base_url": _http_url,
    "model": _text,
    "deployment": _text,
    "api_version": _text,
    "api_key_env": _env_name,
    "messages": _messages,
    "params": _params,
    "stream": _bool,
    "timeout": _probe_timeout_ms,
    "interval": _interval_ms,
    # 1 GiB: a body is held in memory whole and stored in one row.
    "max_response_bytes": _integer(1024, 2**30, " (1 GiB)"),
    "daily_token_budget": _integer(1),
    "daily_request_budget": _integer(1),
    "detect": _detect,
}

# A name identifies one target, so it cannot have a default.
_DEFAULT_KEYS = {key: check for key, check in _TARGET_KEYS.items() if key != "name"}

_DATABASE_KEYS: dict[str, _Check] = {"url": _database_url}


def _targets(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _Invalid("an array of tables ([[targets]])", value)
    layers = []
    for index, item in enumerate(value):
        with _at(f"[{index}]"):
            layers.append(_read_keys(item, _TARGET_KEYS))
    return layers


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")


def _hostname(value: object) -> str:
    if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
        raise _Invalid('a host name like "monitor.example.com"', value)
    return value.lower().rstrip(".")


def _hostnames(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Invalid('an array of host names like ["monitor.example.com"]', value)
    names = []
    for index, item in enumerate(value):
        with _at(f"[{index}]"):
            names.append(_hostname(item))
    return tuple(names)


def check_hostnames(values: tuple[str, ...], where: str) -> tuple[str, ...]:
    """Host names given outside the config file (`--allowed-host`), checked as the file's."""
    try:
        return tuple(_hostname(value) for value in values)
    except _Invalid as err:
        raise ConfigError(where, "", err.expected, err.got) from None


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
}

# Read like the file, so a built-in default the file would refuse fails on import.
_BUILTIN = _read_keys(dict(defaults.TARGET), _DEFAULT_KEYS)


# Rules that combine keys, applied to each target once its layers are merged.

_URL_EXAMPLE = {
    Provider.AZURE: "https://myres.openai.azure.com",
    Provider.OPENAI_COMPATIBLE: "http://localhost:8000/v1",
}
_AZURE_ONLY = {
    "deployment": "the deployment name",
    "api_version": 'an API version like "2024-10-21"',
}


def _merge_params(layers: list[dict[str, Any]], provider: Provider) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for params in layers:
        if any(key in params for key in _CAP_KEYS):
            # One setting under two names: a layer that sets either replaces both below it.
            for key in _CAP_KEYS:
                merged.pop(key, None)
        merged.update(params)
    if not any(key in merged for key in _CAP_KEYS):
        merged[defaults.CAP_KEY[provider]] = defaults.MAX_OUTPUT_TOKENS
    return copy.deepcopy(merged)  # targets must not share mutable values


def _build_target(layers: list[dict[str, Any]], env: Mapping[str, str]) -> Target:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    name = _require(merged, "name", _NAME_EXPECTED)
    provider: Provider = merged["provider"]
    required = f'(required for provider "{provider}")'

    base_url = merged.get("base_url", defaults.BASE_URL.get(provider))
    if base_url is None:
        raise _Invalid(
            f'{_URL_EXPECTED} like "{_URL_EXAMPLE[provider]}" {required}', _NOTHING, "base_url"
        )
    if provider is not Provider.AZURE:  # an Azure deployment already implies its model
        _require(merged, "model", f"a model name {required}")
    for key, expected in _AZURE_ONLY.items():
        if provider is Provider.AZURE:
            _require(merged, key, f"{expected} {required}")
        elif key in merged:
            raise _Invalid(
                f'no {key} for provider "{provider}" (only "azure" uses it)', merged[key], key
            )
    if merged["timeout"] > merged["interval"]:
        expected = f"a timeout no longer than the interval ({format_ms(merged['interval'])})"
        raise _Invalid(expected, format_ms(merged["timeout"]), "timeout")

    api_key_env = merged.get("api_key_env", defaults.API_KEY_ENV.get(provider))
    api_key = None
    if api_key_env is not None:
        value = env.get(api_key_env)
        if not value:
            expected = f"environment variable {api_key_env} to be set (in the environment or .env)"
            raise _Invalid(
                expected, raw("an empty value") if value == "" else _NOTHING, "api_key_env"
            )
        flaw = control_character(value)
        if flaw is not None:
            # Sent as a header it would fail every probe with the key in the traceback; say
            # what is wrong, never the value.
            hint = " (a stray newline from .env?)" if flaw in _LINE_ENDS.values() else ""
            raise _Invalid(f"{api_key_env} to hold a key without control characters",
                           raw(f"one containing {flaw}{hint}"), "api_key_env")
        api_key = Secret(value)

    target = Target(
        name=name,
        provider=provider,
        base_url=base_url,
        model=merged.get("model"),
        messages=copy.deepcopy(merged["messages"]),
        params=_merge_params([layer.get("params", {}) for layer in layers], provider),
        stream=merged["stream"],
        timeout_ms=merged["timeout"],
        interval_ms=merged["interval"],
        max_response_bytes=merged["max_response_bytes"],
        api_key_env=api_key_env,
        api_key=api_key,
        deployment=merged.get("deployment"),
        api_version=merged.get("api_version"),
        daily_token_budget=merged.get("daily_token_budget"),
        daily_request_budget=merged.get("daily_request_budget"),
        detection=_thresholds([layer.get("detect", {}) for layer in layers]),
    )
    return replace(target, config_hash=_config_hash(target))


def effective_config(target: Target) -> dict[str, Any]:
    """What a probe of `target` sends and how long it waits: the part of a config that history
    is compared by, as JSON-able data.

    The interval and the budgets are left out: they decide when a probe runs, not what it sends,
    so changing them keeps history comparable. The key's variable name is in, its value never (rotating a key is no drift).
    """
    return copy.deepcopy(
        {
            "provider": target.provider.value,
            "base_url": target.base_url,
            "model": target.model,
            "deployment": target.deployment,
            "api_version": target.api_version,
            "messages": list(target.messages),
            "params": target.params,
            "stream": target.stream,
            "timeout_ms": target.timeout_ms,
            "max_response_bytes": target.max_response_bytes,
            "api_key_env": target.api_key_env,
        }
    )


def _config_hash(target: Target) -> str:
    """sha256 of the canonical JSON of effective_config: the same config gives the same hash on
    any machine and in any run."""
    canonical = json.dumps(
        effective_config(target), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _build_targets(
    defaults_layer: dict[str, Any], target_layers: list[dict[str, Any]], env: Mapping[str, str]
) -> tuple[Target, ...]:
    targets: list[Target] = []
    first_index: dict[str, int] = {}
    for index, layer in enumerate(target_layers):
        with _at(f"targets[{index}]"):
            target = _build_target([_BUILTIN, defaults_layer, layer], env)
            if target.name in first_index:
                expected = f"a unique name (targets[{first_index[target.name]}] already uses it)"
                raise _Invalid(expected, target.name, "name")
        first_index[target.name] = index
        targets.append(target)
    return tuple(targets)


# Reading the file and the environment.


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
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
        targets = _build_targets(sections.get("defaults", {}), sections.get("targets", []), env)
        alerts = _alert_settings(sections.get("alerts", {}), env, config_path,
                                 [t.name for t in targets])
    except _Invalid as err:
        raise ConfigError(config_path, err.key, err.expected, err.got) from None
    retention = sections.get("retention", {})
    return Settings(config_path=config_path, database_url=database_url, targets=targets,
                    alerts=alerts, **({"raw_retention_ms": retention["raw"]}
                                      if "raw" in retention else {}),
                    allowed_hosts=sections.get("web", {}).get("allowed_hosts", ()))


# What `monitor config check` shows.


def _estimate_prompt_tokens(messages: tuple[dict[str, Any], ...]) -> int:
    """An estimate, not a tokenizer: OpenAI's rule of thumb of ~4 characters a token, plus 4
    tokens of framing per message and 3 that prime the reply. Good for a budget, not a bill."""
    return sum(math.ceil(len(message["content"]) / 4) + 4 for message in messages) + 3


def describe(settings: Settings) -> list[dict[str, Any]]:
    """The resolved targets as JSON-able dicts, keys masked, with their estimated daily cost."""
    # Imported here so that loading config never depends on the layer that sends requests.
    from monitor.providers import chat_url

    rows = []
    for target in settings.targets:
        cap = target.params.get("max_completion_tokens", target.params.get("max_tokens", 0))
        tokens_per_probe = _estimate_prompt_tokens(target.messages) + cap * target.params.get(
            "n", 1
        )
        probes_per_day = _DAY_MS / target.interval_ms
        rows.append(
            {
                "name": target.name,
                "provider": target.provider.value,
                "url": chat_url(target),
                "model": target.model,
                "deployment": target.deployment,
                "api_version": target.api_version,
                "stream": target.stream,
                "interval": format_ms(target.interval_ms),
                "timeout": format_ms(target.timeout_ms),
                "max_response_bytes": target.max_response_bytes,
                "api_key_env": target.api_key_env,
                "api_key": target.api_key.masked() if target.api_key else None,
                "messages": [dict(message) for message in target.messages],
                "params": copy.deepcopy(target.params),
                "config_hash": target.config_hash,
                "probes_per_day": round(probes_per_day, 2),
                "estimated_tokens_per_probe": tokens_per_probe,
                "expected_tokens_per_day": round(tokens_per_probe * probes_per_day),
                "daily_token_budget": target.daily_token_budget,
                "daily_request_budget": target.daily_request_budget,
            }
        )
    return rows


def _count(number: float) -> str:
    return f"{number:,.0f}" if number == int(number) else f"{number:,.2f}"


def render_check(settings: Settings) -> str:
    """The resolved targets as text: what each probe will call and send, and roughly what it costs."""
    rows = describe(settings)
    blocks = []
    for row in rows:
        fields = {
            "provider": row["provider"],
            "url": row["url"],
            "model": row["model"],
            "deployment": row["deployment"],
            "stream": "true" if row["stream"] else "false",
            "interval": row["interval"],
            "timeout": row["timeout"],
            "api key": f"{row['api_key_env']} = {row['api_key']}" if row["api_key_env"] else "none",
            "params": json.dumps(row["params"], sort_keys=True, ensure_ascii=False),
            "per day": f"{_count(row['probes_per_day'])} probes, "
            f"~{row['expected_tokens_per_day']:,} tokens (estimated)",
        }
        lines = [row["name"]]
        lines += [f"  {label:<10}  {value}" for label, value in fields.items() if value is not None]
        blocks.append("\n".join(lines))
    count = len(rows)
    probes = sum(row["probes_per_day"] for row in rows)
    tokens = sum(row["expected_tokens_per_day"] for row in rows)
    blocks.append(
        f"total: {count} target{'' if count == 1 else 's'}, {_count(probes)} probes/day, "
        f"~{tokens:,} tokens/day (estimated)"
    )
    return "\n\n".join(blocks)
