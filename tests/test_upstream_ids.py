"""store/upstream_ids.py: every text comes back exactly, the common shapes in about half."""

from __future__ import annotations

import random
import string
import uuid

import pytest

from monitor.store import upstream_ids


@pytest.mark.parametrize(("text", "stored_bytes"), [
    ("req_" + "0123456789abcdef" * 2, 18),  # OpenAI's request id
    ("chatcmpl-" + "AbCdEfGhIjKlMnOpQrStUvWxYz012", 24),  # OpenAI's response id
    ("chatcmpl-" + "0" * 29, 17),  # as the simulator's hex ones, leading zeros kept
    ("msg_01XFDUDYJgAACzvnptvVoYEL", 20),  # Anthropic's
    ("req_011CV4pGZr7d8sWJ3mS4Xb3N", 20),
    ("9a2d1f3e-07b4-4c55-9e1a-3f0c2b7d6e81", 17),  # Azure's, a dashed uuid
    ("9A2D1F3E-07B4-4C55-9E1A-3F0C2B7D6E81", 37),  # not lower case: verbatim
    ("", 1), ("x", 2), ("req_", 5), ("req_\x01nul", 9), ("été", 6), ("r" * 250, 190),
])
def test_a_shape_is_stored_in_its_bytes_and_read_back_exactly(text: str,
                                                              stored_bytes: int) -> None:
    stored = upstream_ids.encode(text)
    assert (upstream_ids.decode(stored), len(stored)) == (text, stored_bytes)


def test_any_text_reads_back_exactly_and_never_costs_more_than_a_byte() -> None:
    rng = random.Random(14)
    alphabets = [string.ascii_letters + string.digits + "_-+/é²", upstream_ids.HEX, "0A", "z9"]
    texts = [rng.choice(upstream_ids.PREFIXES + ("chatcmpl", "req"))
             + "".join(rng.choice(rng.choice(alphabets)) for _ in range(rng.randint(0, 300)))
             for _ in range(5000)] + [str(uuid.uuid4()) for _ in range(100)]
    for text in texts:
        stored = upstream_ids.encode(text)
        assert upstream_ids.decode(stored) == text
        assert len(stored) <= len(text.encode()) + 1


@pytest.mark.parametrize("stored", [
    bytes([2 + 2 * len(upstream_ids.PREFIXES), 1, 0]),  # no such prefix
    bytes([5, 29]) + bytes(21),  # a byte short for 29 base62 digits
    bytes([5, 1, 0xFF]),  # six bits of a digit, then bits that are none
    bytes([5, 1, 0xF8]),  # digit value 62: beyond base62
    bytes([2, 1, 0x10]),  # a number beyond one hex digit
])
def test_bytes_that_encode_cannot_have_made_are_refused(stored: bytes) -> None:
    with pytest.raises(ValueError, match="upstream id"):
        upstream_ids.decode(stored)
