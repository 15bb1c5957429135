"""The one owner of a server-side WebSocket: state, framing, ping/pong, close, cork and backpressure.

Everything the gateway sends on a client socket goes through its :class:`WSConnection`:
relayed events, error frames, the application's ``{"type":"pong"}``, WebSocket pings and
pongs, the idle and drain closes, and the abort of a dead peer. aiohttp keeps reading the
socket (and answers a client's CLOSE itself); nothing else writes to it.

**State.** ``OPEN`` until our CLOSE is decided (:meth:`WSConnection.close`), aiohttp sends
one (the client closed first) or the transport is closing; then ``CLOSING``; ``CLOSED``
once the transport is gone. Past ``OPEN`` every write raises ``ConnectionResetError``:
no frame can follow our CLOSE.

**The fast path.** aiohttp's ``send_frame`` costs three coroutine layers per frame; on
the token hot path that is a third of the gateway's CPU. A server frame is a 2-, 4- or
10-byte header and the unmasked payload (RFC 6455 §5.2), so it is written in one
``transport.write``, and something to await is returned only when the send buffer is past
:data:`WRITE_BUFFER_LIMIT` (backpressure: the relay then stops reading the provider).
Corked frames (one upstream read's burst) leave in one ``send``. Frames are written whole,
so aiohttp's own writes (its reply to a client's CLOSE) never interleave with ours.

**The fallback.** The fast path needs aiohttp's private writer (``ws._writer`` with its
``transport`` and ``protocol._drain_helper``). If that shape is missing the connection says
so once in the log and sends through the public ``send_frame``; the buffer limit and the
slow-consumer cut-off still hold, measured on the request's public transport
(``get_write_buffer_size``). :attr:`WSConnection.fast` says which path a socket is on.

**The slow consumer.** A reader that keeps the buffer past the limit for
``slow_consumer_timeout`` seconds is cut: ``on_slow_consumer`` is called (the session
cancels its generations with ``Run.cancel("slow_consumer")``), the last frames (error,
end) then go out without waiting, up to :data:`STALL_SLACK` more bytes, and writes past
that raise ``ConnectionResetError``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

__all__ = ["STALL_SLACK", "WRITE_BUFFER_LIMIT", "State", "WSConnection", "encode_frame"]

log = logging.getLogger("tokenwire.ws")

WRITE_BUFFER_LIMIT = 256 * 1024  #: bytes queued in the kernel-side buffer before we wait
#: after a stall, what may still be queued without waiting (the error and end frames)
STALL_SLACK = 64 * 1024
#: the fallback has no drain waiter in public API: it looks at the buffer this often while over the limit
FALLBACK_POLL = 0.01

_TEXT = 0x1
_PING = 0x9
_PONG = 0xA
_HEADERS = [bytes((0x81, n)) for n in range(126)]  # FIN + text opcode, short lengths


class State(enum.IntEnum):
    OPEN = 0
    CLOSING = 1  #: our CLOSE is decided or sent (or the client's arrived): no frame may follow
    CLOSED = 2  #: the transport is gone


_OPEN, _CLOSING, _CLOSED = State.OPEN.value, State.CLOSING.value, State.CLOSED.value


def encode_frame(payload: bytes, opcode: int = _TEXT) -> bytes:
    """One unmasked server frame (FIN set): header and payload."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def _control_payload(payload: bytes) -> bytes:
    if len(payload) > 125:  # RFC 6455 §5.5: control frames carry at most 125 bytes
        raise ValueError("a control frame's payload is at most 125 bytes")
    return payload


_warned_fallback = False


class WSConnection:
    """One client socket, written only through here (see the module docstring)."""

    __slots__ = (
        "_closer",
        "_corked",
        "_drain",
        "_queued",
        "_raw",
        "_state",
        "_ws",
        "fast",
        "on_slow_consumer",
        "slow_consumer_timeout",
        "stalled_at",
        "transport",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        *,
        slow_consumer_timeout: float = 0.0,
        on_slow_consumer: Callable[[], None] | None = None,
    ) -> None:
        """``ws`` must be prepared; ``transport`` is its request's (``request.transport``, public API)."""
        self._ws = ws
        #: the public transport: buffer size, closing state, abort (both paths)
        self.transport = transport
        self.slow_consumer_timeout = slow_consumer_timeout
        #: called once per stall, when the reader has kept the buffer full for ``slow_consumer_timeout``
        self.on_slow_consumer = on_slow_consumer
        self.stalled_at: float | None = None
        self._state = _OPEN if transport is not None else _CLOSED
        #: while corked, frames are collected here and written as one ``send`` by :meth:`uncork`
        self._corked: list[bytes] | None = None
        self._closer: asyncio.Future[None] | None = None
        #: the fallback's bytes handed to send tasks that have not written them yet (they count as buffered)
        self._queued = 0
        writer = getattr(ws, "_writer", None)
        raw = getattr(writer, "transport", None)
        drain = getattr(getattr(writer, "protocol", None), "_drain_helper", None)
        if (
            raw is None
            or drain is None
            or (transport is not None and raw is not transport)
            or getattr(writer, "use_mask", True)
            or getattr(writer, "compress", 1)
            or type(getattr(ws, "_closed", None)) is not bool  # what write() reads per token
        ):
            self._raw: asyncio.Transport | None = None
            self._drain: Callable[[], Awaitable[None]] = self._poll_drain
            self.fast = False
            _warn_fallback()
        else:
            self._raw = raw
            self._drain = drain
            self.fast = True

    # -- state ------------------------------------------------------------------
    @property
    def state(self) -> State:
        return State(self._observe())

    def _observe(self) -> int:
        """The state, brought up to date with what aiohttp and the transport did meanwhile."""
        transport = self.transport
        if self._state != _CLOSED and (transport is None or transport.is_closing()):
            self._state = _CLOSED
        elif self._state == _OPEN and self._ws.closed:
            self._state = _CLOSING  # aiohttp answered the client's CLOSE (or is sending one)
        return self._state

    @property
    def open(self) -> bool:
        return self.state is State.OPEN

    def _refuse(self) -> ConnectionResetError:
        if self._observe() == _OPEN:
            self._state = _CLOSING
        self._corked = None
        return ConnectionResetError("the WebSocket is closing: no frame may follow its CLOSE")

    def buffered(self) -> int:
        """Bytes waiting to be sent: the transport's buffer (and the fallback's sends not yet started)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return 0
        return transport.get_write_buffer_size() + self._queued

    # -- data frames --------------------------------------------------------------
    def write(self, payload: bytes) -> Awaitable[None] | None:
        """Queue one text frame; returns an awaitable only if the caller must wait (backpressure)."""
        raw = self._raw
        if raw is None:
            return self._fallback(payload, _TEXT)
        if self._state or raw.is_closing() or self._ws._closed:  # _closed: `closed` is a property
            raise self._refuse()
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
        raw.write(frame)
        if raw.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            return self._over_limit()
        return None

    async def send(self, payload: bytes) -> None:
        """:meth:`write`, waiting if it says so (error frames and answers from the session's task)."""
        wait = self.write(payload)
        if wait is not None:
            await wait

    def post(self, payload: bytes) -> None:
        """A text frame that never waits, whatever the buffer holds (the slow-consumer error, from a callback).

        The caller bounds how many it posts (one per generation it cuts). It raises
        ``ConnectionResetError`` once the socket is closing, as every write does.
        """
        raw = self._raw
        if raw is not None and (self._state or raw.is_closing() or self._ws.closed):
            raise self._refuse()
        if raw is None:
            self._fallback_spawn(payload, _TEXT)
        elif self._corked is not None:
            self._corked.append(encode_frame(payload))
        else:
            raw.write(encode_frame(payload))

    def cork(self) -> bool:
        """Collect the next frames and send them as one (several tokens from one upstream read).

        A paced stream gets one token per read, so this only matters when tokens arrive in
        bursts (a fast provider, or a gateway catching up): one ``send`` instead of one per token.
        The caller must :meth:`uncork` before it awaits anything. False if not possible.
        """
        if self._raw is None or self._corked is not None or self._state:
            return False
        self._corked = []
        return True

    def uncork(self) -> Awaitable[None] | None:
        """Send what was collected; an awaitable if the caller must wait (as :meth:`write`)."""
        corked, self._corked = self._corked, None
        raw = self._raw
        if not corked or raw is None:
            return None
        if self._state or raw.is_closing() or self._ws.closed:
            raise self._refuse()
        raw.write(corked[0] if len(corked) == 1 else b"".join(corked))
        if raw.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            return self._over_limit()
        return None

    # -- control frames -----------------------------------------------------------
    def ping(self, data: bytes = b"") -> None:
        """A WebSocket ping (liveness: at most one per interval, so it never waits)."""
        self._control(_control_payload(data), _PING)

    def pong(self, data: bytes = b"") -> Awaitable[None] | None:
        """Answer a client's ping; backpressure as :meth:`write` (a ping flood that reads nothing is cut)."""
        self._control(_control_payload(data), _PONG)
        if self.buffered() > WRITE_BUFFER_LIMIT:
            return self._over_limit()
        return None

    def _control(self, data: bytes, opcode: int) -> None:
        raw = self._raw
        if raw is None:
            self._fallback_spawn(data, opcode)
            return
        if self._state or raw.is_closing() or self._ws.closed:
            raise self._refuse()
        raw.write(bytes((0x80 | opcode, len(data))) + data)

    # -- closing ------------------------------------------------------------------
    def close(self, code: int = WSCloseCode.OK, message: bytes = b"") -> Awaitable[None]:
        """The close handshake: from this call on no frame is accepted; our CLOSE goes out, then the client's is read.

        Frames written before (an ``end``) leave before the CLOSE. Await the result for the
        handshake's end (the state is then CLOSED). Idempotent: a second call waits for the first.
        """
        if self._closer is None:
            self._state = max(self._state, _CLOSING)
            self._corked = None
            # its own task: FIFO after the fallback's pending sends, and not cut short by a cancelled caller
            self._closer = asyncio.ensure_future(self._handshake(code, message))
        return asyncio.shield(self._closer)

    async def _handshake(self, code: int, message: bytes) -> None:
        try:
            if not self._ws.closed:
                await self._ws.close(code=code, message=message)
        except Exception as exc:  # a lost connection: nothing left to close
            log.debug("close(%d) failed: %s", code, exc)
        finally:
            self._state = _CLOSED
            self.on_slow_consumer = None  # see drop()

    def drop(self) -> None:
        """The peer is gone: abort without a handshake (the client sees 1006)."""
        self._state = _CLOSED
        # A closed connection has no consumer to cut. Its owner's callback (a bound method of the
        # session) would otherwise keep the session and the socket's whole graph in a reference
        # cycle that only the cyclic collector frees, and its full passes are rare (server/heap.py).
        self.on_slow_consumer = None
        self._corked = None
        if self.transport is not None:
            self.transport.abort()

    # -- the slow path: waiting for the reader --------------------------------------
    def _over_limit(self) -> Awaitable[None] | None:
        """Past the buffer limit: wait for the reader, at most ``slow_consumer_timeout`` (never on the hot path)."""
        stalled_at = self.stalled_at
        if stalled_at is not None:
            if time.monotonic() - stalled_at < self.slow_consumer_timeout:
                # just cut off: the last frames (error, end) go out without waiting, up to a bound
                if self.buffered() > WRITE_BUFFER_LIMIT + STALL_SLACK:
                    raise ConnectionResetError("the client is not reading (slow consumer)")
                return None
            self.stalled_at = None
        return self._drain_or_stall()

    async def _drain_or_stall(self) -> None:
        # aiohttp's drain waiter is shared by every writer of the socket and is not shielded:
        # cancelling it (a timeout, a cancelled generation) would break the socket's later
        # drains and its close. So it runs as its own task that nobody cancels; it ends when
        # the buffer drains or the connection is lost.
        drain = asyncio.ensure_future(self._drain())
        timeout = self.slow_consumer_timeout if self.slow_consumer_timeout > 0 else None
        try:
            done, _ = await asyncio.wait((drain,), timeout=timeout)
        finally:
            if not drain.done():
                drain.add_done_callback(_consume)
        if done:
            drain.result()  # a lost connection raises here, as a plain drain would
            return
        if self.stalled_at is None:
            self.stalled_at = time.monotonic()
            if self.on_slow_consumer is not None:
                self.on_slow_consumer()
        # If that cut the task waiting here (Run.cancel on the run's own task), the cancel is
        # pending on it: it lands at this await, before the task writes anything more.
        await asyncio.sleep(0)

    async def _poll_drain(self) -> None:
        """The fallback's drain: no waiter in public API, so watch the buffer until it is below its low mark."""
        transport = self.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        low = min(transport.get_write_buffer_limits()[0], WRITE_BUFFER_LIMIT)
        while self.buffered() > low:
            if transport.is_closing():
                raise ConnectionResetError("connection lost")
            await asyncio.sleep(FALLBACK_POLL)

    # -- the fallback: aiohttp's public send_frame ------------------------------------
    def _fallback(self, payload: bytes, opcode: int) -> Awaitable[None] | None:
        self._fallback_spawn(payload, opcode)
        if self.buffered() > WRITE_BUFFER_LIMIT:
            return self._over_limit()
        return None

    def _fallback_spawn(self, payload: bytes, opcode: int) -> None:
        if self._state or self._ws.closed or self.transport is None or self.transport.is_closing():
            raise self._refuse()
        # ``send_frame`` writes the frame in its first step and may then wait in aiohttp's
        # drain (not shielded, see _drain_or_stall): a task of its own, which nobody cancels.
        # Tasks start in the order they are created, so frames keep the order of these calls.
        self._queued += len(payload)
        _background(self._fallback_send(payload, opcode))

    async def _fallback_send(self, payload: bytes, opcode: int) -> None:
        self._queued -= len(payload)
        # not ``self._state``: a frame written before close() still goes out before the CLOSE
        # (the closer is a task created after this one); aiohttp marks itself closed before its CLOSE
        if self._ws.closed:
            return
        await self._ws.send_frame(payload, WSMsgType(opcode))


def _warn_fallback() -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        import aiohttp

        log.warning(
            "WebSocket fast path is OFF: aiohttp %s has no private writer of the expected shape; frames go "
            "through send_frame (slower per token); the buffer limit and the slow-consumer cut-off still apply",
            aiohttp.__version__,
        )


_tasks: set[asyncio.Future[Any]] = set()


def _background(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    task.add_done_callback(_consume)


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an orphaned send's or drain's outcome so asyncio does not log it as unhandled."""
    if not task.cancelled():
        task.exception()
