"""How much of a stored conversation is sent: the newest turns that fit (pure: no I/O).

Without a cap the whole history went upstream each turn (turn 40 of a 900 KB-a-turn chat sent
9 M prompt tokens). :func:`fit_history` keeps the system prompt and the new messages, then as
many of the most recent stored messages as fit in every limit: a number of messages, a number
of bytes and the model's context window (less the reply's ``max_tokens``). Oldest turns are
dropped first, never the system prompt; new messages that alone exceed a limit are a clear
``bad_request`` naming the setting.
"""

from __future__ import annotations

from typing import Any

from ..protocol.errors import GatewayError
from ..simulate.reply import estimate_tokens
from ..store.base import message_bytes

__all__ = ["fit_history", "message_bytes"]

Message = dict[str, Any]


def fit_history(
    past: list[Message],
    new: list[Message],
    *,
    max_messages: int = 0,
    max_bytes: int = 0,
    max_tokens: int = 0,
) -> list[Message]:
    """``past`` (system prompt first, if any) + ``new``, cut to the limits (0: no limit).

    Drops the oldest non-system messages of ``past`` first; a leading ``assistant`` message left
    without its question is dropped too. Raises ``bad_request`` when ``new`` (with the system
    prompt) does not fit by itself.
    """
    head = [m for m in past[:1] if m.get("role") == "system"]
    turns = past[len(head) :]
    fixed = head + list(new)
    n_fixed = len(fixed)
    b_fixed = sum(message_bytes(m) for m in fixed)
    t_fixed = estimate_tokens(fixed)
    for limit, used, setting, unit in (
        (max_messages, n_fixed, "max_history_messages", "messages"),
        (max_bytes, b_fixed, "max_history_bytes", "bytes"),
        (max_tokens, t_fixed, "the model's context window", "tokens (estimated, with max_tokens)"),
    ):
        if limit and used > limit:
            raise GatewayError(
                "bad_request",
                f"this turn is {used} {unit} with the system prompt, over {setting} ({limit}); send less",
            )
    keep = 0
    n, b, t = n_fixed, b_fixed, t_fixed
    for m in reversed(turns):
        n2, b2, t2 = n + 1, b + message_bytes(m), t + estimate_tokens([m])
        if (max_messages and n2 > max_messages) or (max_bytes and b2 > max_bytes) or (max_tokens and t2 > max_tokens):
            break
        n, b, t = n2, b2, t2
        keep += 1
    kept = turns[len(turns) - keep :] if keep else []
    if keep < len(turns):
        while kept and kept[0].get("role") != "user":
            kept = kept[1:]  # a turn cut in half: start at a question
    return head + kept + list(new)
