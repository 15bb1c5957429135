"""Write server→client WebSocket text frames straight to the transport.

aiohttp's ``send_frame`` costs three coroutine layers per frame; on the token
hot path that is a third of the gateway's CPU. A server frame is a 2-, 4- or
10-byte header and the unmasked payload (RFC 6455 §5.2), so this writes it in
one ``transport.write`` and only returns something to await when the socket's
send buffer is past its limit (backpressure: the relay then stops reading the
provider). aiohttp keeps handling pings, pongs and the close handshake on the
same transport; frames are written whole, so the two never interleave.

If aiohttp's internals ever change shape, :class:`FrameWriter` falls back to
the public ``send_frame``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

__all__ = ["WRITE_BUFFER_LIMIT", "FrameWriter"]

WRITE_BUFFER_LIMIT = 256 * 1024  #: bytes queued in the kernel-side buffer before we wait
#: after a stall, what may still be queued without waiting (the error and end frames)
STALL_SLACK = 64 * 1024

_HEADERS = [bytes((0x81, n)) for n in range(126)]  # FIN + text opcode, short lengths


class FrameWriter:
    """Writes frames; a reader that keeps the buffer full past ``stall_timeout`` triggers ``on_stall``.

    ``on_stall`` returns True when the task that was waiting must stop (it raises CancelledError).
    """

    __slots__ = ("_corked", "_drain", "_transport", "_ws", "on_stall", "stall_timeout", "stalled_at")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        stall_timeout: float = 0.0,
        on_stall: Callable[[], bool] | None = None,
    ) -> None:
        self._ws = ws
        self.stall_timeout = stall_timeout
        self.on_stall = on_stall
        self.stalled_at: float | None = None
        #: while corked, frames are collected here and written as one ``send`` by :meth:`uncork`
        self._corked: list[bytes] | None = None
        writer = getattr(ws, "_writer", None)
        transport = getattr(writer, "transport", None)
        protocol = getattr(writer, "protocol", None)
        drain = getattr(protocol, "_drain_helper", None)
        if transport is None or drain is None or getattr(writer, "use_mask", True) or getattr(writer, "compress", 1):
            self._transport = None
            self._drain = None
        else:
            self._transport = transport
            self._drain = drain

    def write(self, payload: bytes) -> Awaitable[None] | None:
        """Queue one text frame; returns an awaitable only if the caller must wait."""
        transport = self._transport
        if transport is None:
            return self._ws.send_frame(payload, WSMsgType.TEXT)
        if transport.is_closing() or self._ws.closed:
            raise ConnectionResetError("socket is closed")
        n = len(payload)
        if n < 126:
            frame = _HEADERS[n] + payload
        elif n < 65536:
            frame = b"\x81\x7e" + n.to_bytes(2, "big") + payload
        else:
            frame = b"\x81\x7f" + n.to_bytes(8, "big") + payload
        corked = self._corked
        if corked is not None:
            corked.append(frame)
            return None
        transport.write(frame)
        return self._check(transport)

    def cork(self) -> bool:
        """Collect the next frames and send them as one (several tokens from one upstream read).

        A paced stream gets one token per read, so this only matters when tokens arrive in
        bursts (a fast provider, or a gateway catching up): one ``send`` instead of one per token.
        The caller must :meth:`uncork` before it awaits anything. False if not possible.
        """
        if self._transport is None or self._corked is not None:
            return False
        self._corked = []
        return True

    def uncork(self) -> Awaitable[None] | None:
        """Send what was collected; an awaitable if the caller must wait (as :meth:`write`)."""
        corked, self._corked = self._corked, None
        transport = self._transport
        if not corked or transport is None:
            return None
        if transport.is_closing():
            raise ConnectionResetError("socket is closed")
        transport.write(corked[0] if len(corked) == 1 else b"".join(corked))
        return self._check(transport)

    def _check(self, transport: asyncio.WriteTransport) -> Awaitable[None] | None:
        if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            if self.stall_timeout <= 0:
                return self._drain()  # type: ignore[misc]
            return self._over_limit(transport)
        return None

    def ping(self) -> None:
        """Send a WebSocket ping (empty payload); the client's pong is read by the session."""
        transport = self._transport
        if transport is None:
            _background(self._ws.ping())
            return
        if transport.is_closing():
            raise ConnectionResetError("socket is closed")
        transport.write(b"\x89\x00")

    def _over_limit(self, transport: asyncio.WriteTransport) -> Awaitable[None] | None:
        """The slow path: wait for the reader, at most ``stall_timeout`` (the hot path never gets here)."""
        stalled_at = self.stalled_at
        if stalled_at is not None:
            if time.monotonic() - stalled_at < self.stall_timeout:
                # just cut off: the last frames (error, end) go out without waiting, up to a bound
                if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT + STALL_SLACK:
                    raise ConnectionResetError("the client is not reading (slow consumer)")
                return None
            self.stalled_at = None
        return self._drain_or_stall()

    async def _drain_or_stall(self) -> None:
        # aiohttp's drain waiter is shared by every writer of the socket and is not shielded:
        # cancelling it (a timeout, a cancelled generation) would break the socket's later
        # drains and its close. So it runs as its own task that nobody cancels; it ends when
        # the buffer drains or the connection is lost.
        drain = asyncio.ensure_future(self._drain())  # type: ignore[var-annotated]
        try:
            done, _ = await asyncio.wait((drain,), timeout=self.stall_timeout)
        finally:
            if not drain.done():
                drain.add_done_callback(_consume)
        if done:
            drain.result()  # a lost connection raises here, as a plain drain would
            return
        if self.stalled_at is None:
            self.stalled_at = time.monotonic()
            if self.on_stall is not None and self.on_stall():
                # the waiting generation itself is cut: cancel it here (Task.cancel from inside
                # the task would only land at its next real suspension, after more writes)
                raise asyncio.CancelledError


_tasks: set[asyncio.Task[None]] = set()


def _background(coro: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    task.add_done_callback(_consume)


def _consume(task: asyncio.Future[None]) -> None:
    """Retrieve an orphaned drain's outcome so asyncio does not log it as unhandled."""
    if not task.cancelled():
        task.exception()
