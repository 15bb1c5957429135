"""The embedded simulated provider: serves the seed's four models offline.

Tokens are paced on an absolute schedule (first token at the model's TTFT,
then one every 1/tps seconds), so timing does not drift with event-loop load.
``speed`` scales time (2.0 = twice as fast; 0 = as fast as possible).
After the first token the relay has the stream pushed (one pacing timer per stream, see
:class:`_SimulatedStream`), like the HTTP providers' ``H1Stream``.
"""

from __future__ import annotations

import asyncio
import time
from itertools import islice
from typing import TYPE_CHECKING

from ..protocol import events as ev
from ..protocol.errors import GatewayError
from ..protocol.events import Event
from ..simulate.reply import PROFILES, SpeedProfile, estimate_tokens, iter_reply_tokens
from .base import ChatCall

if TYPE_CHECKING:
    from .wire import Sink

__all__ = ["SimulatedProvider"]

_FALLBACK = SpeedProfile(100, 50)


class _SimulatedStream:
    """The reply is made token by token as it is sent (``iter_reply_tokens``): a request for a
    billion tokens costs only what is streamed before it is cancelled or capped.

    Routing reads it (:meth:`read`) up to the first token; then the relay has it pushed
    (:meth:`push`), the same contract as ``upstream.wire.H1Stream``: one timer per stream
    (``call_later``, re-armed for the next due token) whose callback hands the tokens that are
    due straight to the relay's sink, so a paced token costs no task, future or ``await``.
    ``pause_reading`` stops the timer (what TCP flow control does to an HTTP provider),
    ``resume_reading`` re-arms it; the schedule stays absolute, so tokens that fell due while
    held go out together on resume, as a provider's buffered bytes would. ``sink(None)`` comes
    exactly once, after the finish and usage, unless the stream was closed first.
    """

    __slots__ = (
        "_closed",
        "_due",
        "_held",
        "_interval",
        "_n",
        "_next",
        "_prompt_tokens",
        "_sink",
        "_timer",
        "_tokens",
        "_usage_sent",
    )

    def __init__(self, call: ChatCall, speed: float) -> None:
        profile = PROFILES.get(call.model, _FALLBACK)
        limit = call.params.get("max_tokens") or call.params.get("max_completion_tokens")
        self._tokens = iter_reply_tokens(call.messages, limit)
        self._next = next(self._tokens, None)  #: the token sent next (None: the reply is over)
        self._n = 0
        self._prompt_tokens = estimate_tokens(call.messages)
        self._closed = False
        self._usage_sent = False  #: the finish and usage were handed over (the reply has ended)
        self._sink: Sink | None = None
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._held = False
        if speed > 0:
            self._interval = 1.0 / (profile.tokens_per_s * speed)
            self._due = time.monotonic() + profile.ttft_ms / 1000.0 / speed
        else:
            self._interval = 0.0
            self._due = 0.0

    def _end(self) -> list[Event]:
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

    def _take(self, now: float) -> list[Event]:
        """The next token, and those after it already due at ``now`` (at most 64; all 64 when unpaced)."""
        token = self._next
        assert token is not None
        if not self._interval:
            batch = [token, *islice(self._tokens, 63)]
            self._next = next(self._tokens, None)
            self._n += len(batch)
            return [(ev.TOKEN, t) for t in batch]
        events: list[Event] = [(ev.TOKEN, token)]
        interval = self._interval
        due = self._due + interval
        tokens = self._tokens
        token = next(tokens, None)
        while token is not None and due <= now and len(events) < 64:
            events.append((ev.TOKEN, token))
            due += interval
            token = next(tokens, None)
        self._due = due
        self._next = token
        self._n += len(events)
        return events

    # -- read (routing, up to the first token) ------------------------------------------
    async def read(self) -> list[Event] | None:
        if self._closed or self._usage_sent:
            return None
        if self._next is None:
            return self._end()
        if self._interval:
            delay = self._due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            return self._take(0.0)  # one token per read: the reader sets the pace
        await asyncio.sleep(0)
        return self._take(0.0)

    # -- push (the relay, after the first token) ----------------------------------------
    def push(self, sink: Sink) -> None:
        """From now on the tokens go to ``sink`` from this stream's timer (see the class docstring)."""
        self._sink = sink
        if self._closed:
            return
        if self._usage_sent:  # read() already handed the finish and usage over: only the end is left
            sink(None)
            return
        self._arm()

    def _arm(self) -> None:
        """Schedule the next send: at the next token's due time (at once when unpaced or overdue)."""
        if self._timer is not None or self._held or self._closed or self._sink is None:
            return
        loop = asyncio.get_running_loop()
        if self._next is not None and self._interval:
            delay = self._due - time.monotonic()
            if delay > 0:
                self._timer = loop.call_later(delay, self._tick)
                return
        self._timer = loop.call_soon(self._tick)

    def _tick(self) -> None:
        """The timer: hand what is due to the sink, then re-arm (unless the sink held or closed us)."""
        self._timer = None
        sink = self._sink
        if self._closed or self._held or sink is None or self._usage_sent:
            return
        try:
            events = self._take(time.monotonic()) if self._next is not None else []
            if self._next is None:
                events += self._end()
        except Exception as exc:  # never a silent stall: the run fails with the reason
            self._usage_sent = True
            sink([(ev.ERROR, GatewayError("upstream_error", f"simulated reply failed ({type(exc).__name__})"))])
            sink(None)
            return
        sink(events)
        if self._usage_sent:
            if not self._closed:
                sink(None)
            return
        self._arm()

    def pause_reading(self) -> None:
        """Hold the tokens back (a client is slow, or paused): the timer stops."""
        self._held = True
        self._disarm()

    def resume_reading(self) -> None:
        self._held = False
        self._arm()

    def close(self) -> None:
        """Stop now: nothing more is sent (not even the end)."""
        self._closed = True
        self._disarm()

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()


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
