"""The aiohttp application: routes, start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from ..auth.policy import AccessPolicy
from ..config import ConfigError, Settings
from ..protocol.errors import GatewayError
from ..protocol.events import CLOSE_DRAIN
from ..runtime.gateway import Gateway, make_store
from ..runtime.metrics import setup_event_log
from ..runtime.relay import Registry, conversation_key
from ..version import __version__
from .access import handshake_middleware, host_middleware
from .aisdk_http import chat_post, chat_stop, chat_stream
from .anthropic_api import count_tokens, list_models, messages
from .disconnects import DisconnectWatch
from .errors import error_response
from .http_api import DISCONNECTS, chat_completions
from .liveness import Liveness
from .metrics_http import access_log_middleware, metrics_handler
from .poll import POLLS, poll_events, poll_start
from .responses_api import cancel_response, create_response, get_response, responses_websocket
from .ws import websocket_handler

__all__ = ["build_gateway", "create_app", "run_server"]

log = logging.getLogger("tokenwire")


def build_gateway(settings: Settings) -> Gateway:
    """The composition root: a gateway with its store, access policy and (with Redis) cluster.

    Raises ConfigError for an unsafe bind (no keys off loopback) or a bad setting.
    """
    store = make_store(settings)
    cluster = None
    if settings.redis_url:
        from ..cluster import Cluster

        cluster = Cluster(settings, store)  # type: ignore[arg-type]
        registry: Registry = cluster.registry
    else:
        registry = Registry(store, settings.resume_retention, settings.read_timeout)
    access = AccessPolicy(settings)
    gw = Gateway(settings, store=store, registry=registry, access=access, cluster=cluster)
    registry.on_finish.append(access.on_finish)  # after the metrics' hook, which Gateway adds
    return gw


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
        principal = await gw.access.authenticate_http(request)
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
        principal = await gw.access.authenticate_http(request)
    except GatewayError as err:
        return error_response(err)
    try:
        found = await gw.store.delete(conversation_key(request.match_info["cid"], principal))
    except GatewayError as err:
        return error_response(err)
    return _json({"deleted": found}, 200 if found else 404)


def _static(name: str, content_type: str, cors: bool = False):
    """A file of tokenwire.web; ``cors``: importable from pages of other origins (a public module)."""
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if cors:
        headers["Access-Control-Allow-Origin"] = "*"

    async def handler(request: web.Request) -> web.Response:
        try:
            data = resources.files("tokenwire.web").joinpath(name).read_bytes()
        except FileNotFoundError:
            raise web.HTTPNotFound() from None
        return web.Response(body=data, content_type=content_type, charset="utf-8", headers=headers)

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
    gw = gateway or build_gateway(settings)
    setup_event_log()
    middlewares = [access_log_middleware(gw, settings.access_log)]
    if isinstance(gw.access, AccessPolicy):
        middlewares += [host_middleware(gw.access), handshake_middleware(gw.access)]
    app = web.Application(client_max_size=max(settings.max_frame_bytes, 1024 * 1024) * 2, middlewares=middlewares)
    app["gateway"] = gw
    app[POLLS] = {}
    app[DISCONNECTS] = disconnects = DisconnectWatch(0.05, settings.sse_keepalive, settings.sse_headers_after)
    #: pings silent sockets, drops dead ones, closes idle ones: one task for all of them
    liveness = Liveness(gw.sessions, settings.ws_ping_interval, settings.idle_timeout)
    app.router.add_get("/ws/chat", _ws_or_426)
    app.router.add_get("/v1/ws/chat", _ws_or_426)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", list_models)
    for base in ("/v1/responses", "/responses"):
        app.router.add_post(base, create_response)
        app.router.add_get(base, responses_websocket)
        app.router.add_get(base + "/{rid}", get_response)
        app.router.add_post(base + "/{rid}/cancel", cancel_response)
    app.router.add_post("/api/chat", chat_post)  # the Vercel AI SDK (docs/compatibility.md)
    app.router.add_get("/api/chat/{id}/stream", chat_stream)
    app.router.add_post("/api/chat/{id}/stop", chat_stop)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_post("/v1/poll/start", poll_start)
    app.router.add_get("/v1/poll/{sid}", poll_events)
    app.router.add_get("/v1/conversations/{cid}", get_conversation)
    app.router.add_delete("/v1/conversations/{cid}", delete_conversation)
    app.router.add_get("/", _static("index.html", "text/html"))
    app.router.add_get("/tokenwire.js", _static("tokenwire.js", "text/javascript", cors=True))
    app.router.add_get("/favicon.ico", _static("favicon.svg", "image/svg+xml"))  # browsers ask on every page
    app.router.add_get("/static/{name}", _static_dir)

    async def on_shutdown(app: web.Application) -> None:
        await liveness.aclose()
        await disconnects.aclose()
        await gw.aclose()

    async def on_startup(app: web.Application) -> None:
        liveness.start()
        if gw.cluster is not None:
            await gw.cluster.start()

    app.on_startup.append(on_startup)

    app.on_cleanup.append(on_shutdown)
    return app


_STATIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


async def _static_dir(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    types = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
    ext = name[name.rfind(".") :] if "." in name else ""
    if not _STATIC_NAME.fullmatch(name) or ".." in name or ext not in types:
        raise web.HTTPNotFound()  # also a NUL or other odd byte in the name: nothing to look up
    return await _static(name, types[ext])(request)


async def drain(gw: Gateway, deadline: float) -> None:
    """Stop taking sockets, tell clients to reconnect elsewhere, let replies finish.

    With Redis, a resumable reply can go on on another instance: its socket is closed
    with 4001 at once, while the generation finishes here and is shipped to Redis. A
    reply that cannot be resumed elsewhere is finished on its socket first.
    """
    gw.draining = True
    t_end = time.monotonic() + deadline
    if gw.cluster is None:
        await gw.registry.shutdown(deadline)

    async def close(session: Any) -> None:
        waits = [run.ended.wait() for run, _ in session.runs.values() if not run.resumable]
        if waits:
            await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=max(0.0, t_end - time.monotonic()))
        with contextlib.suppress(Exception):
            await session.close(CLOSE_DRAIN, b"restarting: reconnect and resume")

    await asyncio.gather(*(close(s) for s in list(gw.sessions)), return_exceptions=True)
    if gw.cluster is not None:
        await gw.registry.shutdown(max(0.0, t_end - time.monotonic()))


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
        gw = build_gateway(settings)
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
