"""Targets: the keys a [[targets]] entry accepts, the layers (built-in < [defaults] < entry)
merged into a Target, and the effective config that history is compared by (its hash is
stored with every probe, so it must stay stable across versions)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import weakref
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from monitor import defaults
from monitor.domain import Check, DetectionThresholds, Provider, Target
from monitor.durations import format_ms
from monitor.errors import raw
from monitor.secrets import Secret

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME_EXPECTED = 'a name like "gpt-4o" (letters, digits, ".", "_", "-"; used on the command line)'
from monitor.config import quality
from monitor.config.checks import (
    _LINE_ENDS,
    _NOTHING,
    _URL_EXPECTED,
    _at,
    _bool,
    _Check,
    _choices,
    _duration_ms,
    _env_name,
    _fraction,
    _http_url,
    _integer,
    _interval_ms,
    _Invalid,
    _number,
    _one_of,
    _positive_number,
    _probe_timeout_ms,
    _read_keys,
    _require,
    _string,
    _table,
    _text,
    control_character,
)


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _Invalid(_NAME_EXPECTED, value)
    return value


def _provider(value: object) -> Provider:
    return Provider(_one_of(tuple(Provider))(value))


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


def _threshold_check(name: str, annotation: str) -> _Check:
    """The check of one DetectionThresholds field, from its name and type."""
    check: _Check
    if name.endswith("_ms"):
        check = _duration_ms
    elif annotation.startswith("int"):
        check = _integer(1)
    elif name.endswith(("p_value", "fraction", "error_rate", "min_change", "min_drop")):
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


# One DetectionThresholds per distinct set in use, shared by the targets that have it: a fleet's
# targets mostly share theirs, and each instance is ~1.6 KB (16 MB at 10,000 targets). Frozen,
# so sharing is safe; weak, so sets no target uses any more (after a reload) go.
_SHARED_THRESHOLDS: weakref.WeakValueDictionary[tuple[tuple[str, Any], ...],
                                                DetectionThresholds] = weakref.WeakValueDictionary()


def _thresholds(layers: list[dict[str, Any]]) -> DetectionThresholds:
    """Merge `detect` tables key by key, [defaults] under the target's own."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    key = tuple(sorted(merged.items()))
    shared = _SHARED_THRESHOLDS.get(key)
    if shared is None:
        shared = DetectionThresholds(**{_DETECT_FIELDS[k].name: v for k, v in merged.items()})
        _SHARED_THRESHOLDS[key] = shared
    return shared


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
    "checks": quality.checks,
}

# A name identifies one target, so it cannot have a default.
_DEFAULT_KEYS = {key: check for key, check in _TARGET_KEYS.items() if key != "name"}

def _targets(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _Invalid("an array of tables ([[targets]])", value)
    layers = []
    for index, item in enumerate(value):
        with _at(f"[{index}]"):
            layers.append(_read_keys(item, _TARGET_KEYS))
    return layers


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


def _check_messages_api(target: Target, own_layers: list[dict[str, Any]]) -> None:
    """What the Anthropic Messages API would refuse with a 400 on every probe."""
    for layer in own_layers:
        for key in defaults.OPENAI_ONLY_PARAMS:
            if key in layer.get("params", {}):
                raise _Invalid(f'no {key} for provider "anthropic" (the Messages API refuses it)',
                               layer["params"][key], f"params.{key}")
    roles = [message["role"] for message in target.messages]
    leading = next((i for i, role in enumerate(roles) if role != "system"), len(roles))
    for index, role in enumerate(roles):
        if role in ("developer", "tool") or (role == "system" and index >= leading) or (
                index == len(roles) - 1 and leading == len(roles)):
            raise _Invalid('user and assistant messages, after any system ones (provider '
                           '"anthropic" sends those as `system`)', role, f"messages[{index}].role")
    if "system" in target.params and leading:
        raise _Invalid("a system message or params.system, not both", raw("both"), "params.system")


def _merge_params(layers: list[dict[str, Any]], provider: Provider) -> dict[str, Any]:
    if provider is Provider.ANTHROPIC:  # the built-in seed would be refused
        layers = [{k: v for k, v in layers[0].items() if k not in defaults.OPENAI_ONLY_PARAMS},
                  *layers[1:]]
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


def _build_target(layers: list[dict[str, Any]], env: Mapping[str, str],
                  check_sets: dict[str, tuple[Check, ...]]) -> Target:
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
        elif key in merged and not (provider is Provider.ANTHROPIC and key == "api_version"):
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
    with _at("checks"):
        checks = quality.resolve(merged.get("checks", []), check_sets)

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
        api_version=merged.get("api_version", defaults.API_VERSION.get(provider)),
        daily_token_budget=merged.get("daily_token_budget"),
        daily_request_budget=merged.get("daily_request_budget"),
        detection=_thresholds([layer.get("detect", {}) for layer in layers]),
        checks=checks,
    )
    if provider is Provider.ANTHROPIC:
        _check_messages_api(target, layers[1:])
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
    defaults_layer: dict[str, Any], target_layers: list[dict[str, Any]], env: Mapping[str, str],
    check_sets: dict[str, tuple[Check, ...]],
) -> tuple[Target, ...]:
    targets: list[Target] = []
    first_index: dict[str, int] = {}
    for index, layer in enumerate(target_layers):
        with _at(f"targets[{index}]"):
            target = _build_target([_BUILTIN, defaults_layer, layer], env, check_sets)
            if target.name in first_index:
                expected = f"a unique name (targets[{first_index[target.name]}] already uses it)"
                raise _Invalid(expected, target.name, "name")
        first_index[target.name] = index
        targets.append(target)
    return tuple(targets)
