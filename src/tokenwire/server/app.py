"""The aiohttp application: routes, start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from ..auth.policy import AccessPolicy, warn_unpriced
from ..config import ConfigError, Settings, StartupError
from ..protocol.errors import GatewayError
from ..protocol.events import CLOSE_DRAIN
from ..runtime.gateway import Gateway, make_store
from ..runtime.metrics import setup_event_log
from ..runtime.relay import Registry, conversation_key, conversation_owner
from ..runtime.tracing import start_telemetry
from ..store.base import MAX_TITLE
from ..version import __version__
from .access import authenticated, handshake_middleware, host_middleware
from .admin import setup_admin
from .aisdk_http import chat_post, chat_stop, chat_stream
from .anthropic_api import count_tokens, get_model, list_models, messages
from .disconnects import DisconnectWatch
from .errors import api_route_errors
from .guard import GUARD, ConnectionGuard, GuardedRunner, raise_fd_limit
from .heap import apply_gc_policy
from .http_api import DISCONNECTS, chat_completions
from .liveness import Liveness
from .metrics_http import access_log_middleware, connection_reader, metrics_handler
from .poll import POLLS, poll_events, poll_start
from .responses_api import cancel_response, create_response, get_response, responses_websocket
from .tracing import traceparent_middleware
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
    gw.telemetry = start_telemetry(registry, os.environ)  # OpenTelemetry, if OTEL_EXPORTER_OTLP_ENDPOINT is set
    warn_unpriced(gw)  # one line if budgeted keys exist and some served models have no price
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
    # a full disk (or a store that is down): replies go on, but turns or usage are not being written
    store: dict[str, Any] = {"ok": gw.registry.store_error is None}
    if gw.registry.store_error is not None:
        store["error"] = gw.registry.store_error[:300]
    access = gw.access
    unsaved = getattr(access, "unsaved_usage", None)
    if unsaved:
        store["ok"] = False
        store["usage_unsaved"] = sum(p[0] for p in unsaved.values())
        if getattr(access, "usage_error", None):
            store["usage_error"] = access.usage_error[:300]
    body["store"] = store
    if not store["ok"] and not gw.draining:
        body["status"] = "degraded"
    if gw.cluster is not None:  # Redis down: still serving, but resume and conversations fail
        body["redis"] = gw.cluster.health()
        if not body["redis"]["ok"] and not gw.draining:
            body["status"] = "degraded"
    return _json(body, 503 if gw.draining else 200)


@authenticated
async def get_conversation(request: web.Request, gw: Gateway, principal: Any) -> web.Response:
    cid = request.match_info["cid"]
    messages = await gw.store.history(conversation_key(cid, principal))  # store_unavailable: Redis down
    if not messages:
        raise GatewayError("not_found", f"no conversation {cid[:128]}")
    return _json({"id": cid, "messages": messages})


@authenticated
async def delete_conversation(request: web.Request, gw: Gateway, principal: Any) -> web.Response:
    found = await gw.store.delete(conversation_key(request.match_info["cid"], principal))
    return _json({"deleted": found}, 200 if found else 404)


@authenticated
async def list_conversations(request: web.Request, gw: Gateway, principal: Any) -> web.Response:
    """This key's conversations, most recent first: ``{"data": [{"id", "title", "updated"}]}``."""
    owner = conversation_owner(principal)
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), 500)
    except ValueError:
        raise GatewayError("bad_request", "limit must be a number") from None
    rows = await gw.store.list(owner, limit)
    return _json({"data": [{**row, "id": row["id"][len(owner) :]} for row in rows]})


@authenticated
async def rename_conversation(request: web.Request, gw: Gateway, principal: Any) -> web.Response:
    """``PATCH /v1/conversations/{cid}`` with ``{"title": "…"}`` and/or ``{"truncate": N}`` (keep the system
    prompt and the first N turns: the chat page's regenerate and edit-and-resend)."""
    cid = request.match_info["cid"]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise GatewayError("invalid_json", 'the body must be JSON: {"title": "…"}') from None
    if not isinstance(body, dict) or not ({"title", "truncate"} & body.keys()):
        raise GatewayError("bad_request", 'give "title" (a string) and/or "truncate" (a number)')
    title, keep = body.get("title"), body.get("truncate")
    if "title" in body and (not isinstance(title, str) or not title.strip()):
        raise GatewayError("bad_request", "title must be a non-empty string")
    if "truncate" in body and (type(keep) is not int or keep < 0):
        raise GatewayError("bad_request", "truncate must be a number of turns, 0 or more")
    key = conversation_key(cid, principal)
    out: dict[str, Any] = {"id": cid}
    found = True
    if keep is not None:
        found = await gw.store.truncate(key, keep)
        out["truncate"] = keep
    if found and title is not None:
        out["title"] = " ".join(title.split())[:MAX_TITLE]
        found = await gw.store.set_title(key, out["title"])
    if not found:
        raise GatewayError("not_found", f"no conversation {cid[:128]}")
    return _json(out)


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
    middlewares = [access_log_middleware(gw, settings.access_log), api_route_errors]
    if isinstance(gw.access, AccessPolicy):
        middlewares += [host_middleware(gw.access), handshake_middleware(gw.access)]
    if gw.registry.tracing:
        middlewares.append(traceparent_middleware)  # the caller's span, for the chats a request starts
    app = web.Application(client_max_size=max(settings.max_frame_bytes, 1024 * 1024) * 2, middlewares=middlewares)
    app["gateway"] = gw
    app[POLLS] = {}

    def count_cut() -> None:
        gw.metrics.slow_consumer_cutoffs += 1

    app[DISCONNECTS] = disconnects = DisconnectWatch(
        0.05,
        settings.sse_keepalive,
        settings.sse_headers_after,
        settings.slow_consumer_timeout,
        on_slow_consumer=count_cut,
    )
    #: header and body timeouts, connections per address: one task for every connection
    app[GUARD] = guard = ConnectionGuard(
        settings.header_timeout, settings.body_timeout, settings.max_connections_per_ip, settings.loopback_exempt
    )
    #: pings silent sockets, drops dead ones, closes idle ones: one task for all of them
    liveness = Liveness(gw.sessions, settings.ws_ping_interval, settings.idle_timeout)
    gw.metrics.connections = connection_reader(gw)  # sockets, SSE responses and their buffers, at scrape time
    app.router.add_get("/ws/chat", _ws_or_426)
    app.router.add_get("/v1/ws/chat", _ws_or_426)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{id:.+}", get_model)
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
    app.router.add_get("/v1/conversations", list_conversations)
    app.router.add_get("/v1/conversations/{cid}", get_conversation)
    app.router.add_patch("/v1/conversations/{cid}", rename_conversation)
    app.router.add_delete("/v1/conversations/{cid}", delete_conversation)
    app.router.add_get("/", _static("index.html", "text/html"))
    app.router.add_get("/tokenwire.js", _static("tokenwire.js", "text/javascript", cors=True))
    app.router.add_get("/favicon.ico", _static("favicon.svg", "image/svg+xml"))  # browsers ask on every page
    app.router.add_get("/static/{name}", _static_dir)
    app.router.add_get("/static/vendor/{name}", _static_dir)  # web/vendor/: markdown-it, highlight.js, uPlot (npm)
    setup_admin(app, gw)  # /admin and /admin/api/* (server/admin.py, docs/admin.md)

    async def on_shutdown(app: web.Application) -> None:
        gw.metrics.stop()
        await liveness.aclose()
        await disconnects.aclose()
        await guard.aclose()
        await gw.aclose()

    async def on_startup(app: web.Application) -> None:
        liveness.start()
        gw.metrics.start()  # the event-loop lag probe
        if gw.cluster is not None:
            await gw.cluster.start()

    app.on_startup.append(on_startup)

    app.on_cleanup.append(on_shutdown)
    return app


_STATIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


async def _static_dir(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    types = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
    if request.path.startswith("/static/vendor/"):
        types[".txt"] = "text/plain"  # the licences
    ext = name[name.rfind(".") :] if "." in name else ""
    if not _STATIC_NAME.fullmatch(name) or ".." in name or ext not in types:
        raise web.HTTPNotFound()  # also a NUL or other odd byte in the name: nothing to look up
    if request.path.startswith("/static/vendor/"):
        name = "vendor/" + name
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
        raise_fd_limit()  # every connection is a descriptor: the soft limit (often 1,024) is lifted to the hard one
        gw = build_gateway(settings)
        gw.worker = worker
        gw.worker_sockets = list(worker_sockets or [])
        if gw.cluster is not None:
            await gw.cluster.check_reachable()
        app = create_app(settings, gw)
        runner = GuardedRunner(
            app,
            app[GUARD],
            handle_signals=False,
            access_log=None,
            shutdown_timeout=1,
            keepalive_timeout=settings.keepalive_timeout,
        )
        await runner.setup()
        site = web.TCPSite(
            runner, settings.host, settings.port, backlog=4096, reuse_address=True, reuse_port=worker is not None
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise bind_error(settings.host, settings.port, exc) from None
        if worker is not None and gw.worker_sockets:  # siblings read our /metrics here
            await web.UnixSite(runner, gw.worker_sockets[worker[0]]).start()
        port = site._server.sockets[0].getsockname()[1] if site._server else settings.port  # type: ignore[union-attr]
        loop_name = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
        if worker is None:
            await gw.router.discover()  # the providers' own model lists (a dead one: MODELS_TIMEOUT, then the config's)
            print(
                f"tokenwire listening on http://{settings.host}:{port}  "
                f"(WebSocket ws://{settings.host}:{port}/ws/chat; "
                f"{'; '.join(startup_summary(gw, settings))}; event loop: {loop_name})",
                flush=True,
            )
        else:
            print(f"tokenwire worker {worker[0]}/{worker[1]} (pid {os.getpid()}) ready on port {port}", flush=True)
        apply_gc_policy(settings.gc_policy)  # last: what start-up built is frozen out of the collector
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


_MAX_LISTED = 8  #: model names per provider in the start-up summary


def startup_summary(gw: Gateway, settings: Settings) -> list[str]:
    """What a person starting the gateway needs to know, as parts of the one start-up line: the
    models and who serves them, the default model, where conversations are kept, whether
    clients need a key."""
    router = gw.router
    parts = []
    for cfg, provider in router.providers:
        names = [m["id"] for m in router.models() if m["provider"] == cfg.name]
        more = len(names) - _MAX_LISTED
        shown = ", ".join(names[:_MAX_LISTED]) + (f", … ({more} more: GET /v1/models)" if more > 0 else "")
        patterns = [m for m in cfg.models if "*" in m or "?" in m]
        if patterns and cfg.name not in router.listed:
            rule = "any model name" if "*" in patterns else "names matching " + ", ".join(patterns)
            shown = f"{shown} and {rule}" if shown else rule
        where = "built-in simulator, no network" if provider.simulated else f"{cfg.kind} API at {cfg.base_url}"
        parts.append(f"models from {cfg.name} ({where}): {shown or 'none listed'}")
    parts.append(f"default model: {router.default_model or 'none (requests must name one)'}")
    if gw.cluster is not None:
        parts.append(f"conversations: Redis at {gw.cluster.link.url}")
    else:
        parts.append(f"conversations: {'memory only' if settings.db_path == ':memory:' else settings.db_path}")
    if getattr(gw.access, "keys_exist", False):
        parts.append("API keys: required")
    elif settings.insecure_open:
        parts.append("API keys: not required (--insecure-open)")
    else:
        parts.append("API keys: not required (loopback only)")
    return parts


def bind_error(host: str, port: int, exc: OSError) -> StartupError:
    """Why the listening socket could not be opened, and what to do, in one line."""
    if isinstance(exc, socket.gaierror):
        return StartupError(
            f"cannot resolve host {host!r} ({exc.strerror}); use an address such as 127.0.0.1 or 0.0.0.0, "
            "or a name this machine resolves (--host, TOKENWIRE_HOST)"
        )
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            f"port {port} on {host} is already in use (another tokenwire?); stop it, or choose another "
            "with --port (TOKENWIRE_PORT; 0 = any free port)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"{host} is not an address of this machine; bind to 127.0.0.1, 0.0.0.0 or one of its own")
    if exc.errno == errno.EACCES:
        return StartupError(f"no permission to listen on {host}:{port} (ports below 1024 need privileges); use --port")
    reason = exc.strerror or str(exc)
    return StartupError(f"cannot listen on {host}:{port} ({reason}); check --host and --port")


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
