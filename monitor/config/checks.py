"""The checks a config value goes through, and how a wrong one is reported.

Each check takes a value as TOML read it and returns it as monitor holds it, or raises _Invalid
(expected, got); `_at(key)` prefixes the key path on the way out, and config.load() adds the file
name when it turns _Invalid into a ConfigError. `summarize()` and `did_you_mean()` are the two phrasings
every config error shares, `alerts.maintenance` included.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, time
from typing import Any, TypeVar
from urllib.parse import urlsplit

from monitor.durations import parse_ms
from monitor.errors import ConfigError, raw
from monitor.secrets import mask

_T = TypeVar("_T")

_Check = Callable[[object], Any]

_NOTHING = raw("nothing")
_DAY_MS = 86_400_000


class _Invalid(Exception):
    """A wrong value; `key` grows outwards through _at() until load() adds the file name."""

    def __init__(self, expected: str, got: object, key: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = summarize(got)
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
            raise _Invalid(*unknown_key(key, checks), key)
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


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")


def _hostname(value: object) -> str:
    if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
        raise _Invalid('a host name like "monitor.example.com"', value)
    return value.lower().rstrip(".")


def _array_of(check: Callable[[object], _T], expected: str) -> Callable[[object], tuple[_T, ...]]:
    """The check of an array whose items each pass `check`, reported as `key[i]`."""
    def check_array(value: object) -> tuple[_T, ...]:
        if not isinstance(value, list):
            raise _Invalid(expected, value)
        items = []
        for index, item in enumerate(value):
            with _at(f"[{index}]"):
                items.append(check(item))
        return tuple(items)

    return check_array


_hostnames = _array_of(_hostname, 'an array of host names like ["monitor.example.com"]')


def check_hostnames(values: tuple[str, ...], where: str) -> tuple[str, ...]:
    """Host names given outside the config file (`--allowed-host`), checked as the file's."""
    try:
        return tuple(_hostname(value) for value in values)
    except _Invalid as err:
        raise ConfigError(where, "", err.expected, err.got) from None


def summarize(value: object, *, dates: bool = False) -> object:
    """A found value as the TOML file spells it: booleans in TOML, a table summarised (it can
    be long and is rarely the useful part); `dates` also spells dates and times in ISO 8601,
    where the key expects one (alerts.maintenance)."""
    if isinstance(value, bool):
        return raw("true" if value else "false")
    if isinstance(value, dict):
        return raw("a table")
    if dates and isinstance(value, date | time):
        return raw(value.isoformat())
    return value


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the known key closest to a misspelt one, or ""."""
    # Above difflib's 0.6 so that "alerts" is not offered "targets".
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.65)
    return f' (did you mean "{close[0]}"?)' if close else ""


def unknown_key(key: str, known: Iterable[str]) -> tuple[str, object]:
    """(expected, got) for a key no rule knows."""
    return (f"a known key ({', '.join(sorted(known))})",
            raw(f"an unknown key{did_you_mean(key, known)}"))

