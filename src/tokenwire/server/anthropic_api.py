"""Anthropic Messages over HTTP: ``POST /v1/messages`` (SSE and JSON) and ``/v1/messages/count_tokens``.

A thin adapter like :mod:`.http_api`: the body is decoded by
:mod:`tokenwire.dialects.anthropic_messages`, the chat goes through
:meth:`Gateway.start_chat`, and the run's events are written by that dialect's
encoder. The ``anthropic`` SDK and Claude Code work against it by changing only
the base URL; keys come as ``x-api-key`` or ``Authorization: Bearer``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from ..dialects import anthropic_messages as am
from ..protocol.errors import GatewayError
from ..simulate.reply import estimate_tokens
from .disconnects import DisconnectWatch
from .errors import error_response
from .http_api import DISCONNECTS, read_json_body
from .http_api import list_models as openai_models
from .streaming import SSEResponder

if TYPE_CHECKING:
    from ..runtime.gateway import Gateway

__all__ = ["count_tokens", "get_model", "list_models", "messages"]


def _error(err: GatewayError) -> web.Response:
    return error_response(err, am.error_body(err))


async def messages(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.access.authenticate_http(request)
        body = await read_json_body(request, gw.settings.max_frame_bytes)
        chat, stream = am.parse_request(body, gw.limits)
        run = await gw.start_chat(principal, chat)
    except GatewayError as err:
        return _error(err)
    model = run.route.model
    stream_id = run.gen.stream_id
    watch: DisconnectWatch = request.app[DISCONNECTS]
    if stream:
        enc = am.SSEEncoder(stream_id, model, estimate_tokens(chat.messages))
        sse = SSEResponder(request, enc)
        run.subscribe(sse)
        await watch.wait(request, run, sse, am.SSEEncoder.PING)
        if sse.resp is None:
            return _error(sse.error or GatewayError("internal_error", "no reply"))
        return await sse.finish()
    reply = am.MessageBuilder()
    run.subscribe(reply)
    await watch.wait(request, run)
    if reply.error is not None:  # a cut-short reply is not passed off as a whole one
        return _error(reply.error)
    return web.Response(body=orjson.dumps(reply.body(stream_id, model)), content_type="application/json")


async def count_tokens(request: web.Request) -> web.Response:
    """``{"input_tokens": N}``: tokenwire's estimate (~4 characters a token), as no provider is asked."""
    gw: Gateway = request.app["gateway"]
    try:
        await gw.access.authenticate_http(request)
        body = await read_json_body(request, gw.settings.max_frame_bytes)
        body.setdefault("max_tokens", 1)
        body.pop("stream", None)
        chat, _ = am.parse_request(body, gw.limits)
        gw.router.resolve(chat.model)  # an unknown model is a 404 here too, as for a message
    except GatewayError as err:
        return _error(err)
    return web.Response(
        body=orjson.dumps({"input_tokens": estimate_tokens(chat.messages)}), content_type="application/json"
    )


async def get_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{id}`` (both SDKs' ``models.retrieve``): one entry of the list, in the caller's shape.

    An alias is answered with the model it names (as a request for it would be routed); an
    unknown id is a 404 in the caller's error shape."""
    gw: Gateway = request.app["gateway"]
    anthropic = "anthropic-version" in request.headers
    name = request.match_info["id"]
    try:
        await gw.access.authenticate_http(request)
        await gw.router.discover()
        target = gw.router.alias_map().get(name, name)
        found = next((m for m in gw.router.models() if m["id"] == target), None)
        if found is None:
            raise GatewayError("unknown_model", f"unknown model {name[:200]!r} (GET /v1/models lists them)")
    except GatewayError as err:
        return _error(err) if anthropic else error_response(err)
    body = am.model_list([found])["data"][0] if anthropic else found
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: Anthropic's shape for a client that sends ``anthropic-version``, else OpenAI's."""
    if "anthropic-version" not in request.headers:
        return await openai_models(request)
    gw: Gateway = request.app["gateway"]
    try:
        await gw.access.authenticate_http(request)
    except GatewayError as err:
        return _error(err)
    await gw.router.discover()
    query = request.query
    try:
        limit = int(query.get("limit", "1000"))
        if not 1 <= limit <= 1000:
            raise ValueError
    except ValueError:
        return _error(GatewayError("bad_request", '"limit" must be an integer from 1 to 1000'))
    page = am.model_list(gw.router.models(), limit, query.get("after_id"), query.get("before_id"))
    return web.Response(body=orjson.dumps(page), content_type="application/json")
