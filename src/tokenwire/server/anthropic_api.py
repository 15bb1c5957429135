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

__all__ = ["count_tokens", "list_models", "messages"]


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
    except GatewayError as err:
        return _error(err)
    return web.Response(
        body=orjson.dumps({"input_tokens": estimate_tokens(chat.messages)}), content_type="application/json"
    )


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
    return web.Response(body=orjson.dumps(am.model_list(gw.router.models())), content_type="application/json")
