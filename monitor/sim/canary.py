"""Canary answers and token counts, deterministic so that output drift is something a scenario does.

An answer depends only on the prompt, the snapshot, the scenario's output_variant and a sampling
key: the request's `seed`, or a draw from the request's own RNG when it samples (temperature > 0)
without one. A prompt asking for "the single word: X" is answered X, as a well-behaved model would.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

_SINGLE_WORD = re.compile(r"single word\s*:?\s*[\"'`“‘]?([^\s\"'`”’]+)", re.IGNORECASE)
# Roughly how o200k splits text: short digit groups, letter runs, single punctuation marks. On the
# fixture's prompt this gives OpenAI's own count (27).
_TOKEN = re.compile(r"\d{1,3}|[^\W\d_]{1,10}|\S")
_PIECE = re.compile(r"\s*\S+")
# From OpenAI's cookbook: every message is framed by 3 tokens, a name costs 1, and the reply is
# primed with 3 more.
_PER_MESSAGE_TOKENS = 3
_PER_NAME_TOKENS = 1
_REPLY_PRIMER_TOKENS = 3
# output_variant 1, 2, ... reformat a single-word answer the way a drifting model might.
_WORD_FORMS = ("{word}", "{title}.", "{word}!", "**{word}**", "{upper}")
_VOCABULARY = (
    "the", "canary", "signal", "model", "answer", "stable", "request", "token", "stream", "window",
    "latency", "server", "quiet", "steady", "drift", "check", "sample", "value", "simple", "clear",
    "system", "result", "prompt", "output", "record", "history", "probe", "fingerprint", "usage",
    "limit", "and", "of", "to", "in", "is", "a", "with", "for", "on", "as", "by", "it", "this",
    "that", "every", "small", "known", "same", "again", "here", "now", "then", "still", "well",
)


def prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """An estimate of what OpenAI would count for `messages`, stable for identical input."""
    total = _REPLY_PRIMER_TOKENS
    for message in messages:
        total += _PER_MESSAGE_TOKENS + _count(str(message.get("role", "")))
        total += _count(_text(message.get("content")))
        if "name" in message:
            total += _PER_NAME_TOKENS
    return total


def answer(messages: Sequence[dict[str, Any]], snapshot: str, variant: int, sample: str) -> str:
    """The full (uncapped) answer text."""
    word = _single_word(messages)
    if word is not None:
        form = _WORD_FORMS[variant % len(_WORD_FORMS)]
        return form.format(word=word, title=word.capitalize(), upper=word.upper())
    key = json.dumps([messages, snapshot, variant, sample], sort_keys=True, default=str)
    rng = random.Random(key)
    words = [rng.choice(_VOCABULARY) for _ in range(rng.randint(12, 40))]
    return " ".join(words).capitalize() + "."


def pieces(text: str) -> list[str]:
    """The answer as tokens (a word with its leading whitespace); joined they give `text` back."""
    found = _PIECE.findall(text)
    if found:
        found[-1] += text[len("".join(found)):]  # trailing whitespace stays on the last piece
    return found


def last_prompt(messages: Sequence[dict[str, Any]]) -> str | None:
    """The text of the last user message (what a scenario's `answers` are keyed by)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text(message.get("content"))
    return None


def _single_word(messages: Sequence[dict[str, Any]]) -> str | None:
    match = _SINGLE_WORD.search(last_prompt(messages) or "")
    word = match[1].rstrip(".,;:!?") if match else ""
    return word or None


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only the text ones are counted
        return " ".join(
            part["text"] for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _count(text: str) -> int:
    return len(_TOKEN.findall(text))
