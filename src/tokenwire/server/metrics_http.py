"""``GET /metrics`` and the access log: the HTTP side of :mod:`tokenwire.runtime.metrics`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from ..protocol.errors import GatewayError
from ..runtime.metrics import ConnectionStats, merge_expositions, write_event
from .errors import error_response
from .siblings import ask_siblings, from_sibling
from .streaming import SSEResponder

if TYPE_CHECKING:
    from ..runtime.gateway import Gateway

__all__ = ["access_log_middleware", "connection_reader", "metrics_handler"]


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus text. Once keys exist it needs one, like every endpoint (usage and costs are
    business data), unless ``metrics_open`` says the port is only reachable by the scraper."""
    gw: Gateway = request.app["gateway"]
    sibling = from_sibling(request)  # another worker (serve --workers, server/siblings.py): no key
    if not gw.settings.metrics_open and not sibling:
        try:
            await gw.access.authenticate_http(request)
        except GatewayError as err:
            return error_response(err)
    text = gw.metrics.render()
    if request.query.get("scope") != "worker" and not sibling:
        # every scrape sees the whole gateway, whichever worker the kernel gave it to
        answers = await ask_siblings(gw, "/metrics", {"scope": "worker"})
        texts = [a[1].decode() for a in answers if a is not None and a[0] == 200]
        if texts:
            text = merge_expositions([text, *texts])
    return web.Response(
        text=text,
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def connection_reader(gw: Gateway) -> Callable[[], ConnectionStats]:
    """What ``Metrics.connections`` reads at scrape time: every open client connection, and its send buffer.

    WebSockets are the gateway's sessions (``WSConnection.buffered``: the transport's buffer, plus
    the fallback path's frames not yet handed to it). SSE responses are found as the subscribers of
    the generations running here (each dialect's responder is an ``SSEResponder``); their buffer
    is their request's transport's. Nothing is tracked per write: this walk is the whole cost.
    """

    def read() -> ConnectionStats:
        stats = ConnectionStats()
        ws = stats.buffered["ws"]
        for session in gw.sessions:
            conn = getattr(session, "conn", None)
            ws.append(conn.buffered() if conn is not None else 0)
        stats.open["ws"] = len(gw.sessions)
        sse = stats.buffered["sse"]
        for run in gw.registry.runs.values():
            if run.gen.ended:
                continue
            for sub in run.subs:
                if isinstance(sub, SSEResponder):
                    transport = sub.request.transport
                    closing = transport is None or transport.is_closing()
                    sse.append(0 if closing else transport.get_write_buffer_size())  # type: ignore[union-attr]
        stats.open["sse"] = len(sse)
        return stats

    return read


#: the page and its files: served, counted in /metrics, but not one log line each
_STATIC_ROUTES = frozenset({"/", "/tokenwire.js", "/static/{name}"})


def access_log_middleware(gw: Gateway, enabled: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    """One JSON line per HTTP request (a WebSocket logs when it closes).

    Only the route template is logged (``/v1/poll/{sid}``), never the concrete
    path (ids there act as handles), the query string (seed clients put their
    key there) nor any header.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]):
        t0 = time.monotonic()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = getattr(request.match_info.route, "resource", None)
            route = resource.canonical if resource is not None else "unmatched"
            key = (request.method, route, status)
            gw.metrics.http[key] = gw.metrics.http.get(key, 0) + 1
            if enabled and route != "/metrics" and not (route in _STATIC_ROUTES and status < 400):
                write_event(
                    {
                        "ts": round(time.time(), 3),
                        "event": "request",
                        "method": request.method,
                        "route": route,
                        "status": status,
                        "ms": round((time.monotonic() - t0) * 1000, 2),
                        "websocket": request.headers.get("Upgrade", "").lower() == "websocket",
                        "remote": request.remote,
                    }
                )

    return middleware
