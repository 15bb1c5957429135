"""Watching HTTP requests that wait on a run: a client that left, a stream that went quiet.

A streamed (SSE) response notices a gone client at its next write, but a
non-streamed request writes nothing until the reply is whole, and an SSE
response waiting for a slow provider's first token writes nothing either: both
would run (and bill) to the end for nobody. One task per process looks at the
transport of every such request every ``interval`` seconds and cancels the run
of a request whose connection is closed (within ~50 ms, as nginx does by
default). The same sweep keeps a silent SSE stream alive: after
``keepalive`` seconds without a write it sends the dialect's ping (an SSE
comment, or Anthropic's ``ping`` event), so that proxies and browsers do not
time it out while a reasoning model thinks. A stream whose first event has not
come within ``headers_after`` seconds is started (its headers are sent) by the
same sweep, so a client sees its 200 and the pings before a slow first token,
while an upstream that fails at once still gets the client a real HTTP status.
And a started stream whose client has read nothing for ``slow_consumer_timeout``
seconds while a write waits on it (the slow consumer, as for WebSockets) is cut:
the error goes out in the dialect's shape, the connection closes and the run is
cancelled with reason ``slow_consumer``.
A stream whose run outlives its client (the AI SDK's resumable reply, see
:meth:`DisconnectWatch.following`) is watched the same way, except that neither a
client that left nor one that stalled cancels the run: the client is let go, and
the reply goes on in its log for ``reconnectToStream``.
No timer or task per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from ..protocol.errors import GatewayError

__all__ = ["DisconnectWatch"]

log = logging.getLogger("tokenwire.http")

#: seconds at least that a cut client is given to read its last bytes (the error) before the
#: connection is dropped: a reader that wakes a moment late still learns why it was cut
CUT_GRACE = 10.0


class _Waiting:
    __slots__ = ("keep_run", "ping", "request", "run", "seen", "since", "sse")

    def __init__(self, request: web.Request, run: Any, sse: Any, ping: bytes | None, keep_run: bool = False) -> None:
        self.request = request
        self.run = run
        self.sse = sse
        self.ping = ping
        #: the run outlives its client (resumable): a client that leaves or stalls is let go, not the run
        self.keep_run = keep_run
        self.seen = -1  #: the SSE responder's write count at ``since``
        self.since = time.monotonic()


class DisconnectWatch:
    def __init__(
        self,
        interval: float = 0.05,
        keepalive: float = 15.0,
        headers_after: float = 1.0,
        slow_consumer_timeout: float = 0.0,
        on_slow_consumer: Any = None,
    ) -> None:
        self.interval = interval
        #: seconds a stream's write may wait on a client that reads nothing before it is cut (0: never)
        self.slow_consumer_timeout = slow_consumer_timeout
        #: called once per stream cut for not reading (the metrics count it)
        self.on_slow_consumer = on_slow_consumer
        self.keepalive = keepalive
        #: seconds an SSE stream waits for its first event before its headers are sent anyway (< 0: never)
        self.headers_after = headers_after
        self.waiting: dict[int, _Waiting] = {}
        self.cancelled = 0  #: runs cancelled because their client left
        self.pings = 0  #: keep-alive pings sent on silent streams
        self.started = 0  #: SSE streams whose headers were sent before their first event
        self.cut = 0  #: SSE streams cut because their client read nothing (slow consumers)
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()

    async def wait(self, request: web.Request, run: Any, sse: Any = None, ping: bytes | None = None) -> bool:
        """Wait for ``run`` to end; False if it was cancelled because the client left first.

        With ``sse`` (an SSEResponder), a stream still without its first event after
        ``headers_after`` seconds is started; with ``ping`` too, a started stream silent for
        ``keepalive`` seconds gets ``ping`` written to it.
        """
        key = id(request)
        self.waiting[key] = _Waiting(request, run, sse, ping)
        self._ensure_sweep()
        try:
            await run.ended.wait()
        finally:
            self.waiting.pop(key, None)
        return run.cancel_reason != "client_gone"

    @contextlib.contextmanager
    def following(self, request: web.Request, run: Any, sse: Any, ping: bytes | None = None) -> Iterator[None]:
        """Watch an SSE stream of a run that outlives its client, while the caller waits on it.

        A client that left is told to its responder (``sse._lost()``, so the handler stops
        waiting); one that read nothing for ``slow_consumer_timeout`` seconds is cut (its
        dialect's error, then the body's end) and so unsubscribed. Neither cancels the run:
        its reply goes on into the generation log, where a reconnect finds it. A started
        stream silent for ``keepalive`` seconds gets ``ping``. Headers are not sent early:
        until its first event the handler can still answer with a real HTTP status.
        """
        key = id(request)
        self.waiting[key] = _Waiting(request, run, sse, ping, keep_run=True)
        self._ensure_sweep()
        try:
            yield
        finally:
            self.waiting.pop(key, None)

    def _ensure_sweep(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._sweep(), name="tokenwire-http-watch")

    async def _sweep(self) -> None:
        while self.waiting:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            for key, w in list(self.waiting.items()):
                transport = w.request.transport
                if transport is None or transport.is_closing():
                    if w.keep_run:
                        del self.waiting[key]
                        w.sse._lost()
                        continue
                    self.cancelled += 1
                    w.run.cancel("client_gone")
                    continue
                sse = w.sse
                if sse is None:
                    continue
                if sse.resp is None:
                    if w.keep_run:
                        continue
                    if 0 <= self.headers_after <= now - w.since:
                        self.started += 1
                        self._spawn(self._start(w, sse.start()))
                    continue
                stalled = sse.stalled_at
                if stalled is not None and 0 < self.slow_consumer_timeout <= now - stalled:
                    self._cut(w)
                    continue
                if w.ping is None:
                    continue
                if sse.writes != w.seen:
                    w.seen, w.since = sse.writes, now
                elif now - w.since >= self.keepalive:
                    w.since = now
                    self.pings += 1
                    self._spawn(self._ping(w))

    def _cut(self, w: _Waiting) -> None:
        stall = self.slow_consumer_timeout
        self.cut += 1
        if self.on_slow_consumer is not None:
            self.on_slow_consumer()
        then = "the reply goes on: reconnect to resume it" if w.keep_run else "generation cancelled"
        log.info("cutting an SSE stream: client not reading (slow_consumer; %s)", then)
        err = GatewayError(
            "slow_consumer", f"the client read nothing for {stall:g} s while its send buffer was full; {then}"
        )
        w.sse.cut(err, grace=max(stall, CUT_GRACE))
        if not w.keep_run:
            w.run.cancel("slow_consumer")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _start(self, w: _Waiting, prepared: Any) -> None:
        try:
            await prepared
        except (ConnectionError, RuntimeError):
            w.run.cancel("client_gone")

    async def _ping(self, w: _Waiting) -> None:
        try:
            await w.sse.resp.write(w.ping)
        except (ConnectionError, RuntimeError):
            if w.keep_run:
                w.sse._lost()
            else:
                w.run.cancel("client_gone")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
