"""Subscribers that write a run's events to an HTTP response, in any dialect.

:class:`SSEResponder` is the one Server-Sent Events writer: a dialect's encoder
says what bytes each event becomes; this sends the headers with the first bytes
(so a provider that refuses the request up front still gets the client a real
HTTP status, not a 200 with an error inside), then writes each event. A client
that goes away ends the subscription (the relay then cancels the run).

After the first write, each event is one HTTP/1.1 chunk written straight to the
transport (``%x\r\n<event>\r\n``), as :mod:`.connection` does for WebSocket
frames: aiohttp's ``StreamResponse.write`` is a coroutine per token (two with the
relay's wait), which cost the SSE dialects 6-10 µs of CPU per token over protocol
v1's socket (bench/research/dialect_relay_cpu.py). Like a socket, it returns
something to wait on only when the transport's buffer is past its limit. When
aiohttp's response writer is not of the shape this relies on (compression, a
length, observers of each chunk, a later aiohttp), every write takes
``StreamResponse.write``; tests/e2e/test_sse_contract.py checks the shape.

A client that stops reading must not hold a generation (and its upstream connection) for
ever: the HTTP watch cuts a responder whose write has waited for the client for
``slow_consumer_timeout`` seconds (:attr:`SSEResponder.stalled_at`), as a WebSocket's is
cut. :meth:`SSEResponder.cut` writes the error in the dialect's shape and the end of the
body past the limit (what the reader finds when it wakes), then closes the connection.

A slow provider must not look dead: the HTTP watch (:mod:`.disconnects`) calls
:meth:`SSEResponder.start` when no event came within ``sse_headers_after``
seconds, so the client has its 200 and headers while the model thinks (an error
after that is written into the stream, in the dialect's shape).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, ClassVar

from aiohttp import web

from ..dialects.base import Encoder
from ..protocol.errors import GatewayError
from ..protocol.events import END, ERROR

__all__ = ["SSE_HEADERS", "SSEResponder"]

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


#: bytes queued in the transport before a writer waits for the client (as for sockets)
WRITE_BUFFER_LIMIT = 256 * 1024


class SSEResponder:
    __slots__ = ("_fast", "_prepared", "encode", "error", "request", "resp", "stalled_at", "writes")
    #: the response headers (a dialect's subclass adds its own, e.g. the AI SDK's stream marker)
    HEADERS: ClassVar[dict[str, str]] = SSE_HEADERS

    def __init__(self, request: web.Request, encoder: Encoder) -> None:
        self.request = request
        self.encode = encoder.encode
        self.resp: web.StreamResponse | None = None
        #: the run failed before anything was sent: the handler answers with this error's status
        self.error: GatewayError | None = None
        self.writes = 0  #: events written (the keep-alive sweep watches it for silence)
        #: the transport, once events may be written to it as chunks directly (see the module doc)
        self._fast: Any = None
        self._prepared: asyncio.Future[None] | None = None  #: the headers are being (or were) sent
        #: when the write now waiting for the client began to wait (None: no write waits)
        self.stalled_at: float | None = None

    def start(self) -> asyncio.Future[None]:
        """Send the headers now (once), before any event; writes wait until they are out."""
        if self._prepared is None:
            self.resp = web.StreamResponse(headers=self.HEADERS)
            self._prepared = asyncio.ensure_future(self.resp.prepare(self.request))
        return self._prepared

    def send(self, rest: bytes, kind: int, value: Any) -> Awaitable[None] | None:
        if self.resp is None:
            if kind == ERROR:
                self.error = value
                return None
            if kind == END and self.error is not None:
                return None
        data = self.encode(rest, kind, value)
        if not data:
            return None
        transport = self._fast
        if transport is None:
            return self._write(data)
        if transport.is_closing():
            self._lost()
            raise ConnectionResetError("the client is gone")
        self.writes += 1
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            return self._drain()
        return None

    def _lost(self) -> None:
        """The client went away (a subclass that outlives its client is told here)."""

    async def _drain(self) -> None:
        """Wait (off the hot path: only past the buffer limit) until the client has read enough."""
        transport = self._fast
        self.stalled_at = time.monotonic()
        try:
            while transport is not None and transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                if transport.is_closing():
                    self._lost()
                    raise ConnectionResetError("the client is gone")
                await asyncio.sleep(0.01)
        finally:
            self.stalled_at = None

    def cut(self, err: GatewayError, grace: float) -> None:
        """The client is not reading: its last bytes go out past the limit, then the connection closes.

        The last bytes are ``err`` in the dialect's shape and the end of the chunked body, written
        without waiting (a reader that wakes up finds why it was cut). The connection is closed
        once they are read, or aborted after ``grace`` seconds if they never are. Every later
        write raises ConnectionResetError, so the run's subscription ends at its next event.
        """
        transport = self.request.transport
        self._lost()
        if transport is None or transport.is_closing():
            return
        # a write through aiohttp waiting on the client has handed its whole chunk to the transport
        fast = self._fast or (_chunk_transport(self.resp, self.request) if self.resp is not None else None)
        data = self.encode(b"", ERROR, err) if fast is transport else None
        if data:
            transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data))
        transport.close()
        asyncio.get_running_loop().call_later(grace, _abort, transport)

    async def finish(self) -> web.StreamResponse:
        """End a started stream (the client may be gone: then there is nothing to finish)."""
        assert self._prepared is not None and self.resp is not None
        try:
            await self._prepared
            await self.resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        return self.resp

    async def write(self, data: bytes | None) -> None:
        """Write bytes already in the dialect's shape (a replay), through aiohttp: one await each."""
        if data:
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        self.writes += 1
        prepared = self.start()
        if not prepared.done():
            await asyncio.shield(prepared)
        prepared.result()  # a failed prepare (the client left) raises here
        assert self.resp is not None
        self.stalled_at = time.monotonic()  # aiohttp's write waits here while the client reads nothing
        try:
            await self.resp.write(data)
        finally:
            self.stalled_at = None
        if self._fast is None:
            self._fast = _chunk_transport(self.resp, self.request)


def _abort(transport: Any) -> None:
    """A cut client that never read its last bytes: drop the connection (nothing else is waiting on it)."""
    if transport.get_write_buffer_size():
        transport.abort()


def _chunk_transport(resp: web.StreamResponse, request: web.Request) -> Any:
    """The transport, if aiohttp's writer for ``resp`` sends plain chunks we may write ourselves."""
    writer = getattr(resp, "_payload_writer", None)
    transport = request.transport
    if (
        transport is None
        or getattr(writer, "transport", None) is not transport
        or getattr(writer, "chunked", False) is not True
        or getattr(writer, "_compress", True) is not None
        or getattr(writer, "length", 0) is not None
        or getattr(writer, "_headers_written", False) is not True
        or getattr(writer, "_on_chunk_sent", True) is not None
        or getattr(writer, "on_body_write", True) is not None
    ):
        return None
    return transport
