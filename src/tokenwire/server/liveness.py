"""One task per process keeps every socket honest: pings, dead peers, idle sockets.

aiohttp's own heartbeat arms two timers per socket and drops a socket whose pong
is not *processed* within half an interval. On a loaded gateway (20,000 sockets
while the CPU is shared) a pong that arrived in time can sit unread behind other
work, and healthy clients were cut (6.8 % of them in the idle load test). Here:

- any frame from the client counts as a sign of life (a pong, a ping, a chat);
- only a socket that has been silent for ``ping_interval`` is pinged;
- a socket is dropped after two silent intervals, and only after the loop has had
  a few passes to read what is already waiting in the kernel; a sweep that itself
  ran late (the loop is starved) drops nobody;
- a socket with no application frame and no generation for ``idle_timeout`` is
  closed with code 4000.

One sweep every quarter interval costs well under a microsecond per socket, and
there is no timer or timeout object per socket at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from typing import Protocol

__all__ = ["Liveness", "Watched"]

log = logging.getLogger("tokenwire.ws")

_YIELD_EVERY = 2000  #: sockets per slice of a sweep, so one sweep never holds the loop for long
_SETTLE_PASSES = 3  #: loop passes granted to frames already received before a socket is dropped


class Watched(Protocol):
    """What the sweeper needs of a socket session."""

    last_seen: float  #: monotonic time of the last frame of any kind from the client
    last_frame: float  #: ... of the last application (text or binary) frame
    pinged: bool  #: a ping went out since ``last_seen``

    def busy(self) -> bool:
        """A generation is running: the socket is not idle, whatever the client sends."""
        ...

    def ping(self) -> None: ...

    def drop(self) -> None:
        """The peer is gone: close the connection without a handshake (the client sees 1006)."""
        ...

    def close_idle(self) -> None: ...


class Liveness:
    """Sweeps ``sessions`` every ``tick`` seconds; see the module docstring for the rules."""

    def __init__(
        self,
        sessions: Collection[Watched],
        ping_interval: float,
        idle_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.ping_interval = ping_interval
        self.idle_timeout = idle_timeout
        self.clock = clock
        periods = [p for p in (ping_interval, idle_timeout) if p > 0]
        self.tick = max(0.05, min(min(periods) / 4, 5.0)) if periods else 0.0
        self.stats = {"pings": 0, "dropped": 0, "idle_closed": 0, "late_sweeps": 0}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.tick and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tokenwire-liveness")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.tick
            await asyncio.sleep(self.tick)
            lag = loop.time() - due
            try:
                await self.sweep(starved=self.ping_interval > 0 and lag > self.ping_interval / 2)
            except Exception:  # never let one bad socket stop the heartbeat of all the others
                log.exception("liveness sweep failed")

    async def sweep(self, starved: bool = False) -> None:
        """One pass over every socket. ``starved``: the loop ran this sweep late, so drop nobody."""
        interval = self.ping_interval
        idle = self.idle_timeout
        now = self.clock()
        suspects: list[Watched] = []
        for i, s in enumerate(list(self.sessions)):
            if i and i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
                now = self.clock()
            if idle > 0 and now - s.last_frame >= idle and not s.busy():
                self.stats["idle_closed"] += 1
                s.close_idle()
                continue
            if interval <= 0:
                continue
            silent = now - s.last_seen
            if silent >= 2 * interval and s.pinged:
                suspects.append(s)
            elif silent >= interval and not s.pinged:
                s.pinged = True
                self.stats["pings"] += 1
                try:
                    s.ping()
                except (ConnectionError, RuntimeError):
                    pass  # closing already; the session ends on its own
        if not suspects:
            return
        if starved:
            self.stats["late_sweeps"] += 1
            return
        for _ in range(_SETTLE_PASSES):  # let frames already in the kernel reach their sessions
            await asyncio.sleep(0)
        now = self.clock()
        for s in suspects:
            if now - s.last_seen >= 2 * interval:
                self.stats["dropped"] += 1
                s.drop()
