"""A chat completion request's fields, validated as OpenAI validates them.

Refusals are InvalidRequest, carrying OpenAI's own message, param and code, so a client's error
handling meets the same 400s it would meet in production.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
    "help center at help.openai.com.)"
)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    n: int
    cap: int | None
    temperature: float
    seed: int | None


class InvalidRequest(Exception):
    """A 400 in OpenAI's words."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def parse_request(body: bytes, deployment: str | None) -> ChatRequest:
    """The request's fields, validated as OpenAI does; `InvalidRequest` in OpenAI's words otherwise."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise InvalidRequest(_BAD_JSON)
    model = data.get("model") if deployment is None else deployment  # Azure routes by deployment
    if model is None:
        raise InvalidRequest("you must provide a model parameter")
    if not isinstance(model, str):
        raise _type_error("model", "a string", model)
    messages = data.get("messages")
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", "messages",
                       "missing_required_parameter")
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise InvalidRequest("Invalid 'messages': empty array. Expected an array with minimum length 1, "
                       "but got an empty array instead.", "messages", "empty_array")
    for index, message in enumerate(messages):
        _check_message(message, f"messages[{index}]")
    stream = _typed(data, "stream", bool, "a boolean") or False
    options = _typed(data, "stream_options", dict, "an object")
    if options is not None and not stream:
        raise InvalidRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                       "stream_options")
    include_usage = _typed(options or {}, "include_usage", bool, "a boolean",
                           "stream_options.include_usage") or False
    max_tokens = _integer(data, "max_tokens", 1)
    max_completion_tokens = _integer(data, "max_completion_tokens", 1)
    if max_tokens is not None and max_completion_tokens is not None:
        raise InvalidRequest("Setting 'max_tokens' and 'max_completion_tokens' at the same time is not "
                       "supported; use 'max_completion_tokens'.", "max_tokens", "invalid_parameter")
    temperature = _typed(data, "temperature", (int, float), "a number")
    if temperature is not None and not 0 <= temperature <= 2:
        raise InvalidRequest(f"Invalid 'temperature': decimal out of range. Expected a value between 0 "
                       f"and 2, but got {temperature} instead.", "temperature", "invalid_value")
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=include_usage,
        n=_integer(data, "n", 1, 128) or 1,
        cap=max_completion_tokens if max_tokens is None else max_tokens,
        temperature=1.0 if temperature is None else float(temperature),  # OpenAI's default
        seed=_integer(data, "seed", None),
    )


def _check_message(message: object, key: str) -> None:
    if not isinstance(message, dict):
        raise _type_error(key, "an object", message)
    role = message.get("role")
    if role is None:
        raise InvalidRequest(f"Missing required parameter: '{key}.role'.", f"{key}.role",
                       "missing_required_parameter")
    if role not in _ROLES:
        supported = ", ".join(f"'{r}'" for r in _ROLES)
        raise InvalidRequest(f"Invalid value: '{role}'. Supported values are: {supported}.",
                       f"{key}.role", "invalid_value")


def _typed(data: dict[str, Any], name: str, kind: type | tuple[type, ...], expected: str,
           param: str | None = None) -> Any:
    value = data.get(name)
    # bool is an int in Python but not in JSON: `"n": true` is a type error, not n = 1.
    if value is not None and (not isinstance(value, kind) or (
            isinstance(value, bool) and kind is not bool)):
        raise _type_error(param or name, expected, value)
    return value


def _integer(data: dict[str, Any], name: str, minimum: int | None,
             maximum: int | None = None) -> int | None:
    value: int | None = _typed(data, name, int, "an integer")
    if value is not None and minimum is not None and value < minimum:
        raise InvalidRequest(f"Invalid '{name}': integer below minimum value. Expected a value >= "
                       f"{minimum}, but got {value} instead.", name, "integer_below_min_value")
    if value is not None and maximum is not None and value > maximum:
        raise InvalidRequest(f"Invalid '{name}': integer above maximum value. Expected a value <= "
                       f"{maximum}, but got {value} instead.", name, "integer_above_max_value")
    return value


def _type_error(param: str, expected: str, value: object) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}, but got "
                    f"{_json_type(value)} instead.", param, "invalid_type")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
