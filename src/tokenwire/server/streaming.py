"""Subscribers that write a run's events to an HTTP response, in any dialect.

:class:`SSEResponder` is the one Server-Sent Events writer: a dialect's encoder
says what bytes each event becomes; this sends the headers with the first bytes
(so a provider that refuses the request up front still gets the client a real
HTTP status, not a 200 with an error inside), then writes each event. A client
that goes away ends the subscription (the relay then cancels the run).

A slow provider must not look dead: the HTTP watch (:mod:`.disconnects`) calls
:meth:`SSEResponder.start` when no event came within ``sse_headers_after``
seconds, so the client has its 200 and headers while the model thinks (an error
after that is written into the stream, in the dialect's shape).
"""

from __future__ import annotations

import asyncio
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


class SSEResponder:
    __slots__ = ("_prepared", "encode", "error", "request", "resp", "writes")
    #: the response headers (a dialect's subclass adds its own, e.g. the AI SDK's stream marker)
    HEADERS: ClassVar[dict[str, str]] = SSE_HEADERS

    def __init__(self, request: web.Request, encoder: Encoder) -> None:
        self.request = request
        self.encode = encoder.encode
        self.resp: web.StreamResponse | None = None
        #: the run failed before anything was sent: the handler answers with this error's status
        self.error: GatewayError | None = None
        self.writes = 0  #: events written (the keep-alive sweep watches it for silence)
        self._prepared: asyncio.Future[None] | None = None  #: the headers are being (or were) sent

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
        return self._write(data)

    async def finish(self) -> web.StreamResponse:
        """End a started stream (the client may be gone: then there is nothing to finish)."""
        assert self._prepared is not None and self.resp is not None
        try:
            await self._prepared
            await self.resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        return self.resp

    async def _write(self, data: bytes) -> None:
        self.writes += 1
        prepared = self.start()
        if not prepared.done():
            await asyncio.shield(prepared)
        prepared.result()  # a failed prepare (the client left) raises here
        assert self.resp is not None
        await self.resp.write(data)
