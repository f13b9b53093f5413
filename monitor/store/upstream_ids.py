"""Upstream ids (a response's `x-request-id`, a completion's `id`) as the bytes probes store.

Every probe carries two ids that are unique by design, so no dictionary shrinks them: 36 and
38 bytes of text for OpenAI's `req_` and 32 hex digits, `chatcmpl-` and 29 alphanumerics.
Packed, their digits take half (hex) to three quarters (base62) of that. The first byte names
the shape; shapes are append-only (history decodes with the table it was written with):

- 0: anything else, as UTF-8.
- 1: a lower-case dashed uuid (Azure's request ids), its 16 bytes.
- 2 + 2 * prefix + alphabet: one of PREFIXES, then digits of HEX or BASE62 (alphabet 0 or 1):
  one byte of digit count (so leading zeros survive), then the digits in the fewest whole
  bytes: hex as one big-endian number, base62 six bits a digit, first digit first.

`encode` is a function of the text alone and `decode(encode(text)) == text` for every text, so
an equality lookup binds the same bytes the row holds.
"""

from __future__ import annotations

import binascii

PREFIXES = ("", "req_", "chatcmpl-", "msg_")
HEX = "0123456789abcdef"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VERBATIM = 0
_UUID = 1
_VERBATIM_TAG = bytes((_VERBATIM,))
_UUID_TAG = bytes((_UUID,))
_MAX_DIGITS = 255
# Longest first: every prefix but "" ends in "_" or "-", which no digit is, so the longest
# that matches is the only one that can.
_BY_LENGTH = sorted(enumerate(PREFIXES), key=lambda item: -len(item[1]))
# A base62 digit's value is its index, as a base64 character's is: binascii packs and unpacks
# six bits a digit in C.
_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_TO_BASE64 = bytes.maketrans(BASE62.encode(), _BASE64.encode())
_FROM_BASE64 = bytes.maketrans(_BASE64.encode(), BASE62.encode())


def encode(text: str) -> bytes:
    """The stored bytes of `text`: its shape's when one fits and is shorter, else verbatim."""
    if len(text) == 36 and text[8] == text[13] == text[18] == text[23] == "-":
        digits = text.replace("-", "")
        if len(digits) == 32 and not digits.strip(HEX):
            return _UUID_TAG + bytes.fromhex(digits)
    for index, prefix in _BY_LENGTH:
        if text.startswith(prefix):
            break
    digits = text[len(prefix):]
    count = len(digits)
    # ASCII letters and digits only, so the text is ASCII: its UTF-8 is len(text) bytes.
    if 0 < count <= _MAX_DIGITS and digits.isascii() and digits.isalnum():
        if digits.strip(HEX):
            tag, number = 3 + 2 * index, _pack_base62(digits)
        else:
            tag, number = 2 + 2 * index, int(digits, 16).to_bytes((count + 1) // 2)
        if 2 + len(number) < 1 + len(text):
            return bytes((tag, count)) + number
    return _VERBATIM_TAG + text.encode()


def decode(stored: bytes) -> str:
    """The text `encode` made `stored` from. Raises ValueError on bytes it cannot have made."""
    tag = stored[0]
    if tag == _VERBATIM:
        return stored[1:].decode()
    if tag == _UUID and len(stored) == 17:
        digits = stored[1:].hex()
        return "-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))
    index, base62 = divmod(tag - 2, 2)
    if not 0 <= index < len(PREFIXES) or len(stored) < 2:
        raise ValueError(f"upstream id: shape {tag} of {len(stored)} bytes")
    count, number = stored[1], stored[2:]
    digits = _unpack_base62(number, count) if base62 else _unpack_hex(number, count)
    return PREFIXES[index] + digits


def _pack_base62(digits: str) -> bytes:
    """Six bits a digit, first digit first, in the fewest whole bytes (the last padded with
    zero bits)."""
    padded = digits.encode().translate(_TO_BASE64) + b"A" * (-len(digits) % 4)
    return binascii.a2b_base64(padded)[:(6 * len(digits) + 7) // 8]


def _unpack_base62(number: bytes, count: int) -> str:
    if len(number) != (6 * count + 7) // 8:
        raise ValueError(f"upstream id: {len(number)} bytes for {count} base62 digits")
    text = binascii.b2a_base64(number + bytes(-len(number) % 3), newline=False)
    digits = text[:count].translate(_FROM_BASE64).decode()
    if text[count:].strip(b"A") or not digits.isalnum():
        raise ValueError("upstream id: bits that are no base62 digits")
    return digits


def _unpack_hex(number: bytes, count: int) -> str:
    digits = f"{int.from_bytes(number):0{count}x}"
    if len(number) != (count + 1) // 2 or len(digits) != count:
        raise ValueError(f"upstream id: {len(number)} bytes for {count} hex digits")
    return digits
