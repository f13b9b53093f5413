"""A target's `checks` on its answers, and the named lists of them in [check_sets].

`checks` is an array whose items are check tables (`{ content_equals = "391" }`, one kind each,
with an optional `name`) or the name of a set from [check_sets], whose checks it stands for:

    [check_sets]
    arith = [{ content_regex = "^[0-9]+$" }, { finish_reason = "stop" }]

    [[targets]]
    checks = ["arith", { content_equals = "391" }]

A target's `checks` replaces the one in [defaults], like every other key. Within a target each
check has a unique name (its kind unless `name` says otherwise): outcomes are stored and counted
by it.
"""

from __future__ import annotations

import re
from typing import Any

from monitor.config.checks import (
    _NOTHING,
    _at,
    _Check,
    _duration_ms,
    _Invalid,
    _read_keys,
    _table,
    _text,
)
from monitor.domain import Check, CheckKind
from monitor.errors import raw

# Names are labels in reports and in /metrics: kept to what reads well there.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_EXAMPLE = 'a check like { content_equals = "391" } or the name of a [check_sets] entry'


def _name_check(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _Invalid('a name like "arith" (letters, digits, ".", "_", "-"; at most 64)', value)
    return value


def _regex(value: object) -> str:
    pattern = _text(value)
    try:
        re.compile(pattern)
    except re.error as err:
        raise _Invalid(f"a regular expression ({err})", value) from None
    return pattern


def _schema(value: object) -> dict[str, Any]:
    # Here, not at the top: every command loads the config, few configure a JSON schema.
    import jsonschema

    schema = _table(value)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise _Invalid("a JSON schema", raw(f"one that is not: {err.message}")) from None
    return schema


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _Invalid("an integer of at least 1", value)
    return value


_TOOL_KEYS: dict[str, _Check] = {"name": _text, "arguments": _schema}


def _tool(value: object) -> dict[str, Any]:
    tool = _read_keys(value, _TOOL_KEYS)
    if "name" not in tool:
        raise _Invalid('the tool\'s name, like { name = "get_weather" }', _NOTHING, "name")
    return {"name": tool["name"], "arguments": tool.get("arguments")}


# What each kind expects, checked as written: a new kind starts here (and in probe/checks.py).
_KINDS: dict[str, _Check] = {
    CheckKind.CONTENT_EQUALS: _text,
    CheckKind.CONTENT_CONTAINS: _text,
    CheckKind.CONTENT_REGEX: _regex,
    CheckKind.JSON_SCHEMA: _schema,
    CheckKind.FINISH_REASON: _text,
    CheckKind.MAX_COMPLETION_TOKENS: _count,
    CheckKind.MAX_TOTAL: _duration_ms,
    CheckKind.TOOL_CALL: _tool,
}
_CHECK_KEYS: dict[str, _Check] = {**_KINDS, "name": _name_check}


def _check(value: object) -> Check:
    table = _read_keys(value, _CHECK_KEYS)
    kinds = [key for key in table if key in _KINDS]
    if len(kinds) != 1:
        got = raw("none") if not kinds else raw(" and ".join(kinds))
        raise _Invalid(f"one check kind ({', '.join(_KINDS)})", got)
    kind = CheckKind(kinds[0])
    return Check(name=table.get("name", kind.value), kind=kind, expected=table[kind])


class SetName(str):
    """A `checks` item naming a [check_sets] entry, resolved once every set is read."""


def _item(value: object) -> Check | SetName:
    if isinstance(value, str):
        return SetName(value)
    if not isinstance(value, dict):
        raise _Invalid(_EXAMPLE, value)
    return _check(value)


def checks(value: object) -> list[Check | SetName]:
    """A `checks` array as written (sets still by name)."""
    if not isinstance(value, list):
        raise _Invalid(f"an array of checks, each {_EXAMPLE}", value)
    items = []
    for index, item in enumerate(value):
        with _at(f"[{index}]"):
            items.append(_item(item))
    return items


def check_sets(value: object) -> dict[str, tuple[Check, ...]]:
    """The [check_sets] section: name -> its checks."""
    sets = {}
    for name, items in _table(value).items():
        with _at(name):
            _name_check(name)
            if not isinstance(items, list):
                raise _Invalid('an array of checks like [{ content_equals = "391" }]', items)
            found = []
            for index, item in enumerate(items):
                with _at(f"[{index}]"):
                    if not isinstance(item, dict):
                        raise _Invalid('a check like { content_equals = "391" }', item)
                    found.append(_check(item))
            sets[name] = _unique(found, [f"[{index}]" for index in range(len(found))])
    return sets


def resolve(items: list[Check | SetName], sets: dict[str, tuple[Check, ...]]) -> tuple[Check, ...]:
    """A `checks` array with its set names replaced by their checks (read under `checks`)."""
    resolved: list[Check] = []
    where: list[str] = []
    for index, item in enumerate(items):
        if isinstance(item, Check):
            resolved.append(item)
            where.append(f"[{index}]")
            continue
        if item not in sets:
            known = ", ".join(f'"{name}"' for name in sets) or "none are defined"
            raise _Invalid(f"the name of a [check_sets] entry ({known})", str(item),
                           f"[{index}]")
        resolved += sets[item]
        where += [f"[{index}] ({item})"] * len(sets[item])
    return _unique(resolved, where)


def _unique(found: list[Check], where: list[str]) -> tuple[Check, ...]:
    first: dict[str, str] = {}
    for check, place in zip(found, where, strict=True):
        if check.name in first:
            raise _Invalid(
                f'a unique check name ({first[check.name]} is also "{check.name}": '
                'tell them apart with name = "...")', check.name, place)
        first[check.name] = place
    return tuple(found)
