"""Connections that must make progress: header and body timeouts, a per-address cap, the fd limit.

aiohttp reads a request's head and body for as long as the client takes: 300 silent sockets and
300 sockets trickling one header byte every 5 s stayed open indefinitely, and one address could
hold every file descriptor the process had. Here, one task per process (no timer per connection,
as in ``server/liveness.py`` and ``server/disconnects.py``) sweeps every connection:

- a connection that has not completed a request head within ``header_timeout`` seconds of its
  first byte (or, before its first request, of its opening) is answered ``408`` and closed; one
  that never sent a byte is closed without an answer (there is nobody to answer). An idle
  keep-alive connection between requests is aiohttp's ``keepalive_timeout``;
- a request body that has not arrived whole within ``body_timeout`` seconds (a body shorter than
  its ``Content-Length``) fails the read: the handler answers ``408 request_timeout`` and the
  connection is closed;
- a new connection from an address that already holds ``max_connections_per_ip`` is answered
  ``429`` with ``Connection: close`` and closed, before anything is read from it.

:func:`raise_fd_limit` lifts ``RLIMIT_NOFILE`` to its hard limit at start-up and warns when the
result is still low.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = ["GUARD", "BodyTimeout", "ConnectionGuard", "GuardedRunner", "raise_fd_limit"]

log = logging.getLogger("tokenwire.http")

GUARD = "tokenwire.guard"  #: app key of the ConnectionGuard

#: a soft RLIMIT_NOFILE below this after raising it is worth a warning (each socket is a descriptor)
LOW_FD_LIMIT = 4096
#: seconds a refused connection is read (and what it sends dropped) before it is closed
LINGER = 2.0


def _canned(status: str, code: str, message: str, extra: str = "") -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": code, "code": code}})
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{extra}\r\n"
    ).encode() + body


class BodyTimeout(TimeoutError):
    """Set on a request's body stream when it did not arrive in time (aiohttp's lingering read of
    the rest of the body treats a TimeoutError as the end of it, quietly)."""


class _Conn:
    __slots__ = ("ip", "opened")

    def __init__(self, ip: str | None, opened: float) -> None:
        self.ip = ip
        self.opened = opened


class ConnectionGuard:
    def __init__(
        self,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        max_per_ip: int = 256,
        loopback_exempt: bool = True,
    ) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_per_ip = max_per_ip
        self.loopback_exempt = loopback_exempt
        periods = [p for p in (header_timeout, body_timeout) if p > 0]
        self.tick = max(0.05, min(min(periods) / 5, 1.0)) if periods else 0.0
        self.conns: dict[RequestHandler, _Conn] = {}
        #: the connections the header sweep looks at: those not inside a request's handler. A
        #: WebSocket lives inside its upgrade request's handler, so 20,000 idle sockets cost the
        #: sweep nothing (it walked every one of them each tick)
        self.watched: dict[RequestHandler, _Conn] = {}
        self.per_ip: dict[str, int] = {}
        #: request bodies being read: id(request) -> (request, started)
        self.reading: dict[int, tuple[web.BaseRequest, float]] = {}
        #: refused connections being drained before they are closed: transport -> when
        self.lingering: dict[Any, float] = {}
        self.stats = {"header_timeouts": 0, "silent_closed": 0, "body_timeouts": 0, "refused_per_ip": 0}
        self._refused = _canned(
            "429 Too Many Requests",
            "rate_limited",
            f"this address already has {max_per_ip} open connections (max_connections_per_ip)",
            "Retry-After: 1\r\n",
        )
        self._timed_out = _canned(
            "408 Request Timeout",
            "request_timeout",
            f"the request head did not arrive within {header_timeout:g} s (header_timeout)",
        )
        self._task: asyncio.Task[None] | None = None

    # -- connections (called by _GuardedHandler) -----------------------------
    def admit(self, handler: RequestHandler, transport: Any) -> bool:
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else None
        counted = ip if ip is not None and self.max_per_ip > 0 and not self._exempt(ip) else None
        if counted is not None:
            n = self.per_ip.get(counted, 0)
            if n >= self.max_per_ip:
                self.stats["refused_per_ip"] += 1
                return False
            self.per_ip[counted] = n + 1
        self.conns[handler] = self.watched[handler] = _Conn(counted, time.monotonic())
        self._ensure_task()
        return True

    def refuse(self, transport: Any, answer: bytes | None = None) -> None:
        """Answer (429 by default) and half-close; what the client still sends is read and dropped until
        it closes, or for ``LINGER`` seconds (closing at once would make the kernel reset the connection
        when more of its request arrives, and the client would lose the answer)."""
        try:
            transport.write(self._refused if answer is None else answer)
            if transport.can_write_eof():
                transport.write_eof()
        except Exception:
            transport.abort()
            return
        self.lingering[transport] = time.monotonic()
        self._ensure_task()

    def handling(self, handler: RequestHandler, busy: bool) -> None:
        """A request's handler starts (``busy``) or ends on this connection: out of or back into the sweep."""
        if busy:
            self.watched.pop(handler, None)
        else:
            conn = self.conns.get(handler)
            if conn is not None:  # (not if the connection is gone meanwhile)
                self.watched[handler] = conn

    def lost(self, handler: RequestHandler) -> None:
        self.watched.pop(handler, None)
        conn = self.conns.pop(handler, None)
        if conn is not None and conn.ip is not None:
            n = self.per_ip.get(conn.ip, 0) - 1
            if n > 0:
                self.per_ip[conn.ip] = n
            else:
                self.per_ip.pop(conn.ip, None)

    def _exempt(self, ip: str) -> bool:
        if not self.loopback_exempt:
            return False
        try:
            return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
        except ValueError:
            return False

    # -- bodies (called by http_api.read_json_body) ----------------------------
    def reading_body(self, request: web.BaseRequest) -> int | None:
        if self.body_timeout <= 0:
            return None
        key = id(request)
        self.reading[key] = (request, time.monotonic())
        self._ensure_task()
        return key

    def body_done(self, key: int | None) -> None:
        if key is not None:
            self.reading.pop(key, None)

    # -- the one sweep ---------------------------------------------------------
    def _ensure_task(self) -> None:
        if self.tick and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tokenwire-connection-guard")

    async def _run(self) -> None:
        while self.conns or self.reading or self.lingering:
            await asyncio.sleep(self.tick)
            try:
                self.sweep(time.monotonic())
            except Exception:  # never let one odd connection stop the watch over the others
                log.exception("connection guard sweep failed")

    def sweep(self, now: float) -> None:
        for transport, since in list(self.lingering.items()):
            if now - since >= LINGER:
                self.lingering.pop(transport, None)
                transport.close()
        limit = self.header_timeout
        if limit > 0:
            for h, conn in list(self.watched.items()):
                if h._current_request is not None or h._messages or h.transport is None or h.tw_refused is not None:
                    continue  # being handled (its body is read_json_body's), or a parsed request queued
                rx = getattr(h, "tw_rx", None)
                if rx is not None:  # bytes of a request head came in and the head is not whole
                    if now - rx >= limit:
                        self.stats["header_timeouts"] += 1
                        h.tw_refused = h.transport  # what still comes is dropped
                        self.refuse(h.transport, self._timed_out)
                elif h._request_count == 0 and now - conn.opened >= limit:
                    self.stats["silent_closed"] += 1  # opened, never said a thing
                    h.force_close()
        limit = self.body_timeout
        if limit > 0:
            for key, (request, started) in list(self.reading.items()):
                if now - started >= limit:
                    self.reading.pop(key, None)
                    self.stats["body_timeouts"] += 1
                    request.content.set_exception(BodyTimeout(limit))

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class _GuardedHandler(RequestHandler):
    """aiohttp's handler, plus: when the current request head's first byte came (``tw_rx``)."""

    __slots__ = ("tw_guard", "tw_refused", "tw_rx")

    def __init__(self, manager: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.tw_guard = guard
        self.tw_rx: float | None = None
        self.tw_refused: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.tw_guard.admit(self, transport):
            self.tw_refused = transport
            self._manager = None  # never served: aiohttp's connection_lost has nothing to undo
            self.tw_guard.refuse(transport)
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.tw_refused is not None:
            self.tw_guard.lingering.pop(self.tw_refused, None)
            self.tw_refused = None
        self.tw_guard.lost(self)
        super().connection_lost(exc)  # (a no-op for one refused at once: it has no manager)

    def eof_received(self) -> bool | None:
        if self.tw_refused is not None:
            return False  # the client is done too: close
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self.tw_refused is not None:
            return  # refused: read and dropped until it closes
        if self.tw_rx is None and self._current_request is None:
            self.tw_rx = time.monotonic()  # once per request head, not per read
        super().data_received(data)

    async def _handle_request(self, request: Any, start_time: Any, request_handler: Any) -> Any:
        self.tw_rx = None  # the head is whole: from here on it is the handler's (and body_timeout's)
        self.tw_guard.handling(self, True)
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self.tw_rx = None
            self.tw_guard.handling(self, False)


class _GuardedServer(web.Server):
    def __init__(self, guard: ConnectionGuard, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tw_guard = guard

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, self.tw_guard, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are watched by ``guard``."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._tw_guard = guard

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _GuardedServer(
            self._tw_guard,
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )


def raise_fd_limit() -> tuple[int, int] | None:
    """Lift the soft RLIMIT_NOFILE to the hard limit; warn if it stays low. (soft, hard) after."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < LOW_FD_LIMIT:
        log.warning(
            "the open-file limit (RLIMIT_NOFILE) is %d (hard limit %d): each connection is a descriptor, so the "
            "gateway can hold fewer than %d connections; raise it (ulimit -n, LimitNOFILE= in systemd)",
            soft,
            hard,
            soft,
        )
    return soft, hard
