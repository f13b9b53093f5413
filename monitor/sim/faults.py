"""The faults the simulator injects, by name, and the model names that trigger them statelessly.

A fault changes how one answer is delivered, not what the scenario is. The same canonical names are
used by `[faults] kinds`, by POST /_sim/enqueue and by the `sim-*` model names.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

# Answered with an error status and body instead of a completion; nothing is charged.
RATE_LIMITED: Final = "rate_limited"
HTML_ERROR: Final = "html_error"
# The connection misbehaves.
HANG: Final = "hang"
RESET: Final = "reset"
# A completion is sent, but damaged or late.
INVALID_JSON: Final = "invalid_json"
TRUNCATED_BODY: Final = "truncated_body"
TRUNCATED_STREAM: Final = "truncated_stream"
HUGE_BODY: Final = "huge_body"
WRONG_CONTENT_TYPE: Final = "wrong_content_type"
MISSING_FIELDS: Final = "missing_fields"
SLOW: Final = "slow"

NAMED: Final = frozenset(
    {
        RATE_LIMITED, HTML_ERROR, HANG, RESET, INVALID_JSON, TRUNCATED_BODY, TRUNCATED_STREAM,
        HUGE_BODY, WRONG_CONTENT_TYPE, MISSING_FIELDS, SLOW,
    }
)

# Besides the names above, "http_<status>" answers any 4xx/5xx status with an OpenAI error body.
_HTTP: Final = re.compile(r"http_([45]\d\d)")
# 529: Anthropic's overloaded_error, in no registry but sent all the same.
_STATUSES: Final = frozenset(status.value for status in HTTPStatus) | {529}

_MODELS: Final = {
    "sim-429": RATE_LIMITED,
    "sim-hang": HANG,
    "sim-reset": RESET,
    "sim-invalid-json": INVALID_JSON,
    "sim-truncated": TRUNCATED_BODY,
    "sim-truncated-stream": TRUNCATED_STREAM,
    "sim-huge": HUGE_BODY,
    "sim-html": HTML_ERROR,
    "sim-text": WRONG_CONTENT_TYPE,
    "sim-missing-fields": MISSING_FIELDS,
    "sim-slow": SLOW,
}
_MODEL_STATUS: Final = re.compile(r"sim-([45]\d\d)")


def canonical(name: str) -> str | None:
    """The fault `name` stands for, or None when it is not one; http_429 is rate_limited."""
    if name in NAMED:
        return name
    match = _HTTP.fullmatch(name)
    if match is None or int(match[1]) not in _STATUSES:
        return None
    return RATE_LIMITED if match[1] == "429" else name


def for_model(model: str) -> str | None:
    """The fault a `sim-*` model name triggers (sim-503 -> http_503), or None."""
    if model in _MODELS:
        return _MODELS[model]
    match = _MODEL_STATUS.fullmatch(model)
    return canonical(f"http_{match[1]}") if match else None


def http_status(fault: str) -> int | None:
    """The status an `http_<status>` fault answers with, or None for the other faults."""
    match = _HTTP.fullmatch(fault)
    return int(match[1]) if match else None
