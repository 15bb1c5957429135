"""The embedded simulated provider: serves the seed's four models offline.

Tokens are paced on an absolute schedule (first token at the model's TTFT,
then one every 1/tps seconds), so timing does not drift with event-loop load.
``speed`` scales time (2.0 = twice as fast; 0 = as fast as possible).
"""

from __future__ import annotations

import asyncio
import time
from itertools import islice

from ..protocol import events as ev
from ..protocol.events import Event
from ..simulate.reply import PROFILES, SpeedProfile, estimate_tokens, iter_reply_tokens
from .base import ChatCall

__all__ = ["SimulatedProvider"]

_FALLBACK = SpeedProfile(100, 50)


class _SimulatedStream:
    """The reply is made token by token as it is read (``iter_reply_tokens``): a request for a
    billion tokens costs only what is streamed before it is cancelled or capped."""

    __slots__ = ("_closed", "_due", "_interval", "_n", "_next", "_prompt_tokens", "_tokens", "_usage_sent")

    def __init__(self, call: ChatCall, speed: float) -> None:
        profile = PROFILES.get(call.model, _FALLBACK)
        limit = call.params.get("max_tokens") or call.params.get("max_completion_tokens")
        self._tokens = iter_reply_tokens(call.messages, limit)
        self._next = next(self._tokens, None)  #: the token the next read sends (None: the reply is over)
        self._n = 0
        self._prompt_tokens = estimate_tokens(call.messages)
        self._closed = False
        self._usage_sent = False
        if speed > 0:
            self._interval = 1.0 / (profile.tokens_per_s * speed)
            self._due = time.monotonic() + profile.ttft_ms / 1000.0 / speed
        else:
            self._interval = 0.0
            self._due = 0.0

    async def read(self) -> list[Event] | None:
        if self._closed or self._usage_sent:
            return None
        token = self._next
        if token is None:
            self._usage_sent = True
            n = self._n
            return [
                (ev.FINISH, "stop" if n else "length"),
                (
                    ev.USAGE,
                    {
                        "prompt_tokens": self._prompt_tokens,
                        "completion_tokens": n,
                        "total_tokens": self._prompt_tokens + n,
                    },
                ),
            ]
        if self._interval:
            delay = self._due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._due += self._interval
            self._next = next(self._tokens, None)
            self._n += 1
            return [(ev.TOKEN, token)]
        await asyncio.sleep(0)
        batch = [token, *islice(self._tokens, 63)]
        self._next = next(self._tokens, None)
        self._n += len(batch)
        return [(ev.TOKEN, t) for t in batch]

    def close(self) -> None:
        self._closed = True


class SimulatedProvider:
    """In-process provider for ``gpt-4.1``, ``claude-sonnet-4.5``, ``gemini-2.5-flash``
    and ``deepseek-v3.2`` (and any other name, at a generic speed)."""

    simulated = True

    def __init__(self, name: str = "simulated", speed: float = 1.0) -> None:
        self.name = name
        self.speed = speed

    async def start(self, call: ChatCall) -> _SimulatedStream:
        return _SimulatedStream(call, self.speed)

    async def aclose(self) -> None:
        return None
