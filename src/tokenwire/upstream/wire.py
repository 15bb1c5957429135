"""Streamed provider calls over our own HTTP/1.1 connections: a Protocol per connection, a pool per origin.

Why not aiohttp's client here: a paced token is one small network read, and aiohttp turns each
into a wake-up of its reader, a future and a task step before the relay sees it. Here the
connection is an :class:`asyncio.Protocol`; :meth:`H1Connection.data_received` feeds the bytes
to the response's pure decoder (:class:`.h1.H1Response`, which runs the provider's
``StreamParser``), and the events go either

* to a **sink** (:meth:`H1Stream.push`): a plain function the relay registers, called in the same
  callback, so a token reaches the client's socket without any future, task switch or ``await``
  (the relay holds the upstream back with :meth:`H1Stream.pause_reading` when a client is slow); or
* to :meth:`H1Stream.read` (the ``UpstreamStream`` contract): one waiter future per *batch* of
  events, which is how routing reads up to the first token (retries and fallbacks happen there).

**Reuse.** A response that ended cleanly with keep-alive hands its connection back to the
:class:`Pool`, keyed by origin (host, port, TLS), so the next generation pays no TCP or TLS
handshake. A pooled connection the server closed meanwhile is noticed (its transport is
closing, or it sent EOF); one that dies before answering a single byte is retried once on a
fresh connection (the request never reached a live server). Idle connections are dropped after
``idle_timeout``.

aiohttp remains the client for everything off the token path (``GET /models``, key checks).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import NamedTuple

from ..protocol.errors import GatewayError
from ..protocol.events import ERROR, Event
from .base import StreamParser
from .h1 import H1Error, H1Response

__all__ = ["H1Connection", "H1Stream", "Origin", "Pool", "Sink"]

#: a push stream's consumer: called with each batch of decoded events, then once with None at the end
Sink = Callable[[list[Event] | None], None]


class Origin(NamedTuple):
    host: str
    port: int
    tls: bool


#: events decoded and not yet read past which a read stream stops reading the connection (a push
#: stream is held back by its sink instead): memory stays bounded and TCP holds the provider back
READ_AHEAD = 256


class _Stale(Exception):
    """A reused connection closed before answering anything: send the request again on a new one."""


class H1Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a provider; one request at a time."""

    __slots__ = ("idle_since", "lost", "origin", "paused", "pool", "response", "stream", "transport", "uses")

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.response: H1Response | None = None
        self.stream: H1Stream | None = None
        self.lost = False
        self.idle_since = 0.0
        self.uses = 0  #: requests sent on it (1: fresh)
        self.paused = False  #: reading paused (H1Stream.pause_reading)

    # -- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.response
        stream = self.stream
        if resp is None or stream is None:  # bytes on an idle connection: nothing may come there
            self._abort()
            return
        try:
            resp.feed(data)
        except H1Error as exc:
            stream._failed(
                GatewayError(
                    "upstream_bad_response",
                    f"{stream.provider} sent a malformed HTTP response ({exc})",
                    retryable=True,
                    extra={"provider": stream.provider},
                )
            )
            self._abort()
            return
        if resp.complete:
            self._finished(resp)
        stream._progress()

    def eof_received(self) -> bool | None:
        return False  # close our side too: HTTP/1.1 has no use for a half-open connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool._forget(self)
        resp = self.response
        stream = self.stream
        self.response = self.stream = None
        if resp is None or stream is None or stream._closed:
            if resp is not None:
                resp.release()
            return
        if resp.received == 0 and self.uses > 1 and not resp.complete:
            stream._failed(_Stale())
            return
        if not resp.head:
            stream._failed(
                GatewayError(
                    "upstream_unavailable",
                    f"{stream.provider} closed the connection before answering" + (f" ({exc})" if exc else ""),
                    retryable=True,
                    extra={"provider": stream.provider},
                )
            )
            return
        resp.feed_eof(stream.provider)
        stream._progress()

    def pause_writing(self) -> None:  # a request body larger than the send buffer: the kernel catches up
        return None

    def resume_writing(self) -> None:
        return None

    # -- requests ---------------------------------------------------------------------
    def send(self, request: bytes, stream: H1Stream) -> None:
        self.uses += 1
        self.response = stream.response
        self.stream = stream
        assert self.transport is not None
        self.transport.write(request)

    def _finished(self, resp: H1Response) -> None:
        """The response is complete: the connection goes back to the pool, or is closed."""
        self.response = None
        self.stream = None
        transport = self.transport
        if transport is not None and self.paused:
            self.paused = False
            transport.resume_reading()  # paused by a slow client: an idle connection must see its close
        if resp.keep_alive and not self.lost:
            self.pool._release(self)
        else:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        if self.response is not None:
            self.response.release()
        self.response = None
        self.stream = None
        if self.transport is not None:
            self.transport.abort()


class H1Stream:
    """One streamed response: read it (:meth:`read`) or have it pushed (:meth:`push`)."""

    __slots__ = ("_closed", "_conn", "_ended", "_error", "_held", "_sink", "_waiter", "provider", "response")

    def __init__(self, conn: H1Connection, response: H1Response, provider: str) -> None:
        self._conn: H1Connection | None = conn
        self.response = response
        self.provider = provider
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._error: BaseException | None = None
        self._ended = False  #: the end was handed over (read returned None, or the sink got None)
        self._closed = False
        self._held = False  #: reading paused because :meth:`read` fell behind (READ_AHEAD)

    # -- from the connection ------------------------------------------------------------
    def _progress(self) -> None:
        """New bytes were decoded (or the response ended): hand the events on."""
        sink = self._sink
        resp = self.response
        if sink is None:
            if len(resp.events) > READ_AHEAD and not self._held:  # nobody reading: hold the provider back
                self._held = True
                self.pause_reading()
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        events = resp.events
        if events:
            resp.events = []
            sink(events)
        if resp.complete and not self._ended and not self._closed:
            self._ended = True
            sink(None)

    def _failed(self, exc: BaseException) -> None:
        """The connection failed (or answered garbage): the error goes where the events go."""
        self._error = exc
        self._conn = None
        sink = self._sink
        if sink is None:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if not self._ended and not self._closed:
            self._ended = True
            resp = self.response
            if resp.events:
                events, resp.events = resp.events, []
                sink(events)
            if isinstance(exc, GatewayError):
                sink([(ERROR, exc)])
            sink(None)

    # -- the UpstreamStream contract ------------------------------------------------------
    async def wait_head(self) -> None:
        """Until the status and headers are in (raises what ended the connection first)."""
        resp = self.response
        while not resp.head:
            await self._wait()

    async def wait_body(self) -> bytes:
        """A non-stream answer's body (up to its cap): until it is complete, capped or cut."""
        resp = self.response
        while not resp.complete and self._error is None and len(resp.body) < resp._max:
            await self._wait()
        return bytes(resp.body)

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    async def read(self) -> list[Event] | None:
        resp = self.response
        while True:
            events = resp.events
            if events:
                resp.events = []
                if self._held:
                    self._held = False
                    self.resume_reading()
                return events
            if resp.complete or self._closed:
                self._ended = True
                return None
            if self._error is not None:
                if isinstance(self._error, GatewayError):
                    self._ended = True
                    err, self._error = self._error, None
                    resp.complete = True
                    return [(ERROR, err)]
                raise self._error
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def push(self, sink: Sink) -> None:
        """From now on each decoded batch goes to ``sink`` inside the connection's callback.

        What was decoded and not yet read is handed over at once (from the caller), then the
        end if it is already known: ``sink(None)`` comes exactly once.
        """
        self._sink = sink
        if self._held:  # read() fell behind before: from now on the sink decides when to hold
            self._held = False
            self.resume_reading()
        resp = self.response
        if self._error is not None and not self._ended:
            err, self._error = self._error, None
            self._ended = True
            if resp.events:
                events, resp.events = resp.events, []
                sink(events)
            if isinstance(err, GatewayError):
                sink([(ERROR, err)])
            sink(None)
            return
        self._progress()

    def pause_reading(self) -> None:
        """Stop reading the provider (a client is slow, or paused): TCP's window holds it back."""
        conn = self._conn
        if conn is not None and conn.stream is self and conn.transport is not None and not conn.lost:
            conn.paused = True
            conn.transport.pause_reading()

    def resume_reading(self) -> None:
        conn = self._conn
        if conn is not None and conn.stream is self and conn.transport is not None and not conn.lost:
            conn.paused = False
            conn.transport.resume_reading()

    def close(self) -> None:
        """Abort now: the connection is closed, not returned to the pool (unless the response had ended)."""
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None and conn.stream is self:
            conn._abort()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Pool:
    """Keep-alive connections per origin (see the module docstring)."""

    def __init__(self, connect_timeout: float = 10.0, idle_timeout: float = 60.0, max_idle: int = 256) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle  #: idle connections kept per origin
        self._idle: dict[Origin, list[H1Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self.connects = 0  #: connections opened (for tests and the bench: reuse shows as fewer)

    def ssl_context(self) -> ssl.SSLContext:
        """The default verifying context (system CAs, or ``SSL_CERT_FILE``), made once."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def idle(self, origin: Origin) -> H1Connection | None:
        """A pooled connection to ``origin`` that still looks alive, most recently used first."""
        conns = self._idle.get(origin)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            transport = conn.transport
            if conn.lost or transport is None or transport.is_closing():
                continue
            if now - conn.idle_since > self.idle_timeout:
                conn._close()
                continue
            return conn
        return None

    async def connect(self, origin: Origin, provider: str) -> H1Connection:
        loop = asyncio.get_running_loop()
        tls = self.ssl_context() if origin.tls else None
        try:
            async with asyncio.timeout(self.connect_timeout if self.connect_timeout > 0 else None):
                _, conn = await loop.create_connection(
                    lambda: H1Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls is not None else None,
                )
        except TimeoutError:
            raise GatewayError(
                "upstream_timeout",
                f"{provider} did not answer within {self.connect_timeout:g} s",
                retryable=True,
                extra={"provider": provider},
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise GatewayError(
                "upstream_unavailable",
                f"cannot reach {provider} at {origin.host}:{origin.port}: {exc}",
                retryable=True,
                extra={"provider": provider},
            ) from None
        self.connects += 1
        return conn

    async def request(self, origin: Origin, request: bytes, parser: StreamParser | None, provider: str) -> H1Stream:
        """Send ``request`` on a pooled (else new) connection; the stream, once the response head is in.

        ``parser`` decodes the body if it is an event stream (see :class:`.h1.H1Response`)."""
        for _ in range(3):
            conn = self.idle(origin)
            if conn is None:
                conn = await self.connect(origin, provider)
            stream = H1Stream(conn, H1Response(parser), provider)
            conn.send(request, stream)
            try:
                await stream.wait_head()
            except _Stale:  # the server had closed it while it sat in the pool
                continue
            except BaseException:
                stream.close()
                raise
            return stream
        raise GatewayError(
            "upstream_unavailable",
            f"{provider} closed every connection before answering",
            retryable=True,
            extra={"provider": provider},
        )

    def _release(self, conn: H1Connection) -> None:
        conns = self._idle.setdefault(conn.origin, [])
        if len(conns) >= self.max_idle:
            conn._close()
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)

    def _forget(self, conn: H1Connection) -> None:
        conns = self._idle.get(conn.origin)
        if conns and conn in conns:
            conns.remove(conn)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn._close()
        self._idle.clear()
