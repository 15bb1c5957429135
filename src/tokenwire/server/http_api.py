"""OpenAI-compatible HTTP: ``POST /v1/chat/completions`` (SSE and JSON) and ``GET /v1/models``.

A thin adapter: the body is decoded by :mod:`tokenwire.dialects.openai_chat`, the
chat goes through :meth:`Gateway.start_chat` like every other entry point, and the
run's events are written by the dialect's encoder. Existing code using the
``openai`` SDK works by changing only ``base_url``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..dialects import openai_chat
from ..protocol.errors import GatewayError
from .disconnects import DisconnectWatch
from .errors import error_response
from .guard import GUARD, BodyTimeout, ConnectionGuard
from .streaming import SSEResponder

if TYPE_CHECKING:
    from ..runtime.gateway import Gateway

__all__ = ["DISCONNECTS", "chat_completions", "list_models", "read_json_body"]

DISCONNECTS = "tokenwire.disconnects"  #: app key of the DisconnectWatch
#: what a silent Chat Completions stream is kept alive with (an SSE comment: every client ignores it)
KEEPALIVE = b": keep-alive\n\n"


async def read_json_body(request: web.Request, limit: int) -> dict[str, Any]:
    """The request's whole body as a JSON object (at most ``limit`` bytes).

    The body is read to its end: a client (or a proxy) may send it in several TCP
    segments, and what happens to be buffered when the handler runs is not the body.
    """
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError("frame_too_large", f"request body is over the {limit}-byte limit")
    parts: list[bytes] = []
    size = 0
    guard: ConnectionGuard | None = request.app.get(GUARD)
    watch = guard.reading_body(request) if guard is not None else None
    try:
        while True:
            chunk = await request.content.read(limit + 1 - size)
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise GatewayError("frame_too_large", f"request body is over the {limit}-byte limit")
    except BodyTimeout as exc:  # a body shorter than its Content-Length, or one that trickles
        raise GatewayError(
            "request_timeout",
            f"the request body did not arrive whole within {exc.args[0]:g} s (body_timeout); "
            f"got {size} of {request.content_length if request.content_length is not None else '?'} bytes",
        ) from None
    finally:
        if guard is not None:
            guard.body_done(watch)
    raw = b"".join(parts)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError("invalid_json", f"request body is not valid JSON: {exc}") from None
    if type(body) is not dict:
        raise GatewayError("bad_request", "request body must be a JSON object")
    return body


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.access.authenticate_http(request)
        body = await read_json_body(request, gw.settings.max_frame_bytes)
        chat, stream, include_usage = openai_chat.parse_request(body, gw.limits)
        run = await gw.start_chat(principal, chat, conversation_id=chat.conversation_id)
    except GatewayError as err:
        return error_response(err)
    model = run.route.model
    stream_id = run.gen.stream_id
    watch: DisconnectWatch = request.app[DISCONNECTS]
    if stream:
        sse = SSEResponder(request, openai_chat.SSEChunkEncoder(stream_id, model, include_usage))
        run.subscribe(sse)
        await watch.wait(request, run, sse, KEEPALIVE)
        if sse.resp is None:
            return error_response(sse.error or GatewayError("internal_error", "no reply"))
        return await sse.finish()
    reply = openai_chat.CompletionBuilder()
    run.subscribe(reply)
    await watch.wait(request, run)
    if reply.refused is not None:
        return error_response(reply.refused)
    return web.Response(body=orjson.dumps(reply.body(stream_id, model)), content_type="application/json")


async def list_models(request: web.Request) -> web.Response:
    gw: Gateway = request.app["gateway"]
    try:
        await gw.access.authenticate_http(request)
    except GatewayError as err:
        return error_response(err)
    await gw.router.discover()  # the providers' own lists, cached (a dead one costs MODELS_TIMEOUT once a while)
    return web.Response(
        body=orjson.dumps({"object": "list", "data": gw.router.models(), "aliases": gw.router.alias_map()}),
        content_type="application/json",
    )
