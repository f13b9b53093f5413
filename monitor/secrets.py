"""A wrapper that keeps API keys out of reprs, logs and tracebacks by construction."""

from __future__ import annotations


class Secret:
    """Holds a secret string; prints as `Secret('****')`. `.value` is read only to send: an API key
    by probe/providers.py, a notification URL by alerts/channels.py (and hashed into its id), a
    collector's headers by otel/export.py."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def masked(self) -> str:
        """Enough to tell two keys apart in `monitor config check`, never enough to use one."""
        return mask(self._value)

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type, tuple[str]]:
        raise TypeError("a Secret cannot be pickled")


def mask(value: str) -> str:
    """Show enough of a key to tell keys apart, never enough to use it."""
    if len(value) <= 8:
        return "****"
    return f"{value[:3]}…{value[-2:]}"
