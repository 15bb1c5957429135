"""Deterministic replies for the simulated models (pure).

A reply echoes the last user message, then continues with a fixed text that
exercises Markdown rendering (a list, inline code and a code block), cut to
``max_tokens`` tokens. Same input, same tokens: tests can assert on them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from typing import Any

__all__ = [
    "PROFILES",
    "SpeedProfile",
    "estimate_tokens",
    "iter_reply_tokens",
    "reasoning_tokens",
    "reply_tokens",
    "tokenize",
]


@dataclass(frozen=True, slots=True)
class SpeedProfile:
    """Time to first token and tokens per second measured in the seed benchmark."""

    ttft_ms: float
    tokens_per_s: float


#: The seed's benchmark table (000_c777597fb94e64ab.txt).
PROFILES: dict[str, SpeedProfile] = {
    "gpt-4.1": SpeedProfile(127, 42),
    "claude-sonnet-4.5": SpeedProfile(156, 38),
    "gemini-2.5-flash": SpeedProfile(89, 67),
    "deepseek-v3.2": SpeedProfile(94, 71),
}

DEFAULT_MAX_TOKENS = 100

_FILLER = (
    "Streaming sends each token the moment the model produces it, so the reader sees the "
    "answer grow instead of waiting for the whole reply. A WebSocket keeps one connection "
    "open in both directions:\n\n"
    "- the client can **cancel** or *pause* a reply while it streams;\n"
    "- the server numbers every token with a `seq`, so a reconnect resumes without gaps;\n"
    "- several replies can share one socket.\n\n"
    "```python\n"
    'async for token in client.stream("Explain WebSocket"):\n'
    '    print(token, end="")\n'
    "```\n\n"
    "Backpressure matters too: when the reader falls behind, the gateway stops reading "
    "from the model instead of buffering without limit. Heartbeats find dead connections, "
    "and an idle timeout closes sockets nobody uses. "
)

_TOKEN_RE = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[str]:
    """Split text into word-sized pieces (long runs, e.g. Thai, into 4 characters).

    Linear in the text's length: a 1,000,000-character word is cut by index, never by
    re-slicing what is left (which was quadratic and held the event loop for seconds).
    """
    out: list[str] = []
    for piece in _TOKEN_RE.findall(text):
        word = piece.lstrip()
        if len(word) <= 8:
            out.append(piece)
            continue
        lead = len(piece) - len(word)
        cuts = -(-(len(word) - 8) // 4)  # 4-character pieces until at most 8 are left
        out.append(piece[: lead + 4])
        out.extend(word[i : i + 4] for i in range(4, 4 * cuts, 4))
        out.append(word[4 * cuts :])
    return out


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def iter_reply_tokens(
    messages: list[dict[str, Any]], max_tokens: int | None = None, text: str | None = None
) -> Iterator[str]:
    """The deterministic reply to ``messages``, token by token, made as it is read
    (with ``text``: that one token, repeated).

    Lazy, so that a huge ``max_tokens`` costs memory and time only for what is streamed.
    """
    limit = max_tokens or DEFAULT_MAX_TOKENS
    if text:
        yield from repeat(text, limit)
        return
    said = _last_user_text(messages).strip()
    tokens = tokenize((f"You said: {said}\n\n" if said else "") + _FILLER)
    filler = tokenize(_FILLER)
    n = 0
    while True:
        for token in tokens:
            if n >= limit:
                return
            n += 1
            yield token
        tokens = filler


def reply_tokens(messages: list[dict[str, Any]], max_tokens: int | None = None, text: str | None = None) -> list[str]:
    """The deterministic reply to ``messages``, as a list of tokens (see :func:`iter_reply_tokens`)."""
    return list(iter_reply_tokens(messages, max_tokens, text))


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt size as OpenAI-style counting would roughly give it (4 chars a token)."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return chars // 4 + 4 * len(messages) + 3


_THINKING = "The user wants an answer; first weigh what matters, then check each step before replying. "


def reasoning_tokens(n: int) -> list[str]:
    """``n`` deterministic reasoning tokens (for providers that think before answering)."""
    tokens: list[str] = []
    while len(tokens) < n:
        tokens += tokenize(_THINKING)
    return tokens[:n]
