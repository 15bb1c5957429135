"""The aiohttp application: routes, start-up and shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from .. import __version__
from ..config import ConfigError, Settings
from ..metrics import access_log_middleware, metrics_handler, setup_event_log
from ..protocol.errors import GatewayError
from ..protocol.events import CLOSE_DRAIN
from .gateway import Gateway
from .http_api import chat_completions, error_response, list_models
from .poll import poll_events, poll_start
from .relay import conversation_key
from .ws import websocket_handler

__all__ = ["create_app", "run_server"]

log = logging.getLogger("tokenwire")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    gw: Gateway = request.app["gateway"]
    body = {
        "status": "draining" if gw.draining else "ok",
        "version": __version__,
        "pid": os.getpid(),
        "sockets": len(gw.sessions),
        "generations": sum(1 for r in gw.registry.runs.values() if not r.gen.ended),
        "providers": [{"name": cfg.name, "kind": cfg.kind, "simulated": p.simulated} for cfg, p in gw.router.providers],
        "deployments": gw.router.health(),  # circuit breakers and observed latency (docs/providers.md)
    }
    if gw.worker is not None:
        body["worker"] = gw.worker[0]
    if gw.cluster is not None:  # Redis down: still serving, but resume and conversations fail
        body["redis"] = gw.cluster.health()
        if not body["redis"]["ok"] and not gw.draining:
            body["status"] = "degraded"
    return _json(body, 503 if gw.draining else 200)


async def get_conversation(request: web.Request) -> web.Response:
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.authenticate_http(request)
    except GatewayError as err:
        return error_response(err)
    cid = request.match_info["cid"]
    try:
        messages = await gw.store.history(conversation_key(cid, principal))
    except GatewayError as err:  # e.g. store_unavailable while Redis is down
        return error_response(err)
    if not messages:
        return error_response(GatewayError("not_found", f"no conversation {cid[:128]}"))
    return _json({"id": cid, "messages": messages})


async def delete_conversation(request: web.Request) -> web.Response:
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.authenticate_http(request)
    except GatewayError as err:
        return error_response(err)
    try:
        found = await gw.store.delete(conversation_key(request.match_info["cid"], principal))
    except GatewayError as err:
        return error_response(err)
    return _json({"deleted": found}, 200 if found else 404)


def _static(name: str, content_type: str):
    async def handler(request: web.Request) -> web.Response:
        try:
            data = resources.files("tokenwire.web").joinpath(name).read_bytes()
        except FileNotFoundError:
            raise web.HTTPNotFound() from None
        return web.Response(
            body=data,
            content_type=content_type,
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    return handler


async def _ws_or_426(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return web.Response(
            status=426,
            text="this is a WebSocket endpoint: connect with ws:// (Upgrade: websocket)\n",
            headers={"Upgrade": "websocket"},
        )
    return await websocket_handler(request)


def create_app(settings: Settings, gateway: Gateway | None = None) -> web.Application:
    gw = gateway or Gateway(settings)
    setup_event_log()
    app = web.Application(
        client_max_size=max(settings.max_frame_bytes, 1024 * 1024) * 2,
        middlewares=[access_log_middleware(gw, settings.access_log), gw.access.middleware()],
    )
    app["gateway"] = gw
    app.router.add_get("/ws/chat", _ws_or_426)
    app.router.add_get("/v1/ws/chat", _ws_or_426)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_post("/v1/poll/start", poll_start)
    app.router.add_get("/v1/poll/{sid}", poll_events)
    app.router.add_get("/v1/conversations/{cid}", get_conversation)
    app.router.add_delete("/v1/conversations/{cid}", delete_conversation)
    app.router.add_get("/", _static("index.html", "text/html"))
    app.router.add_get("/tokenwire.js", _static("tokenwire.js", "text/javascript"))
    app.router.add_get("/static/{name}", _static_dir)

    async def on_shutdown(app: web.Application) -> None:
        await gw.aclose()

    async def on_startup(app: web.Application) -> None:
        gw.liveness.start()
        if gw.cluster is not None:
            await gw.cluster.start()

    app.on_startup.append(on_startup)

    app.on_cleanup.append(on_shutdown)
    return app


async def _static_dir(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    types = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
    ext = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or ".." in name or ext not in types:
        raise web.HTTPNotFound()
    return await _static(name, types[ext])(request)


async def drain(gw: Gateway, deadline: float) -> None:
    """Stop taking sockets, tell clients to reconnect elsewhere, let replies finish."""
    if gw.cluster is not None:  # clients can resume elsewhere: send them at once
        await gw.cluster.drain(gw, deadline)
        return
    gw.draining = True
    await gw.registry.shutdown(deadline)
    for session in list(gw.sessions):
        try:
            await session.close(CLOSE_DRAIN, b"restarting: reconnect and resume")
        except Exception:
            pass


def run_server(
    settings: Settings,
    worker: tuple[int, int] | None = None,
    on_ready: Callable[[], None] | None = None,
    worker_sockets: list[str] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then drain and exit.

    ``worker`` = (index, count) when this is one of ``serve --workers`` processes
    (server.workers): the port is shared with the others (``SO_REUSEPORT``), and
    ``worker_sockets`` are every worker's private Unix socket (for /metrics).
    """

    async def main() -> None:
        # Signals first: a SIGTERM that arrives while starting (a supervisor stopping its
        # workers right after they said "ready") must drain, not be lost or kill us outright.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if hasattr(signal, "pthread_sigmask"):  # a worker starts with them blocked (server.workers)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        gw = Gateway(settings)
        gw.worker = worker
        gw.worker_sockets = list(worker_sockets or [])
        app = create_app(settings, gw)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(
            runner, settings.host, settings.port, backlog=4096, reuse_address=True, reuse_port=worker is not None
        )
        await site.start()
        if worker is not None and gw.worker_sockets:  # siblings read our /metrics here
            await web.UnixSite(runner, gw.worker_sockets[worker[0]]).start()
        providers = ", ".join(f"{cfg.name}{' (simulated)' if p.simulated else ''}" for cfg, p in gw.router.providers)
        port = site._server.sockets[0].getsockname()[1] if site._server else settings.port  # type: ignore[union-attr]
        loop_name = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
        if worker is None:
            print(
                f"tokenwire listening on http://{settings.host}:{port}  "
                f"(WebSocket ws://{settings.host}:{port}/ws/chat; providers: {providers}; event loop: {loop_name})",
                flush=True,
            )
        else:
            print(f"tokenwire worker {worker[0]}/{worker[1]} (pid {os.getpid()}) ready on port {port}", flush=True)
        if on_ready is not None:
            on_ready()
        await stop.wait()
        if worker is None:
            print("tokenwire: draining…", flush=True)
        await site.stop()
        await drain(gw, settings.drain_timeout)
        await runner.cleanup()

    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        runner.run(main())


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when asked for (or, with "auto", when installed); else asyncio's.

    uvloop's transports make each socket read and write, the gateway's floor cost per
    paced token, cheaper (figures in docs/benchmarks-load.md).
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("event_loop = uvloop, but uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop
