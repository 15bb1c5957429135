"""The caller's W3C ``traceparent`` header, handed to the chats a request starts.

Installed only when OpenTelemetry export is on (server.app.create_app). It puts the header
in runtime.tracing.INCOMING for the request's task, which is where every dialect's handler
calls Gateway.start_chat, so one middleware covers every HTTP dialect without touching them;
a WebSocket's handshake header is the parent of its chats unless a chat frame names its own.
"""

from __future__ import annotations

from aiohttp import web

from ..runtime.tracing import INCOMING

__all__ = ["traceparent_middleware"]


@web.middleware
async def traceparent_middleware(request: web.Request, handler):
    value = request.headers.get("traceparent")
    if value is None:
        return await handler(request)
    token = INCOMING.set(value)
    try:
        return await handler(request)
    finally:
        INCOMING.reset(token)
