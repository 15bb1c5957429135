"""WebSocket handshakes are authenticated before the upgrade, and counted per principal.

The decisions are the access policy's (tokenwire.auth); this is the aiohttp glue:
a refused handshake gets a plain HTTP error (401, 403, 429) a browser or SDK can
read, instead of an upgrade followed by a close.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..auth.policy import PRINCIPAL, WS_PATHS, AccessPolicy
from ..protocol.errors import GatewayError
from .errors import error_response

__all__ = ["handshake_middleware", "host_middleware"]

log = logging.getLogger("tokenwire.auth")


def handshake_middleware(policy: AccessPolicy) -> Callable[[web.Request, Any], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def handshake(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in WS_PATHS or request.headers.get("Upgrade", "").lower() != "websocket":
            return await handler(request)
        try:
            p = await policy.authenticate(request)
            policy.socket_opened(p)
        except GatewayError as err:
            if err.code != "rate_limited":
                log.info("refused a WebSocket from %s: %s", request.remote, err.message)
            return error_response(err)
        request[PRINCIPAL] = p
        try:
            return await handler(request)
        finally:
            policy.socket_closed(p)

    return handshake


def host_middleware(policy: AccessPolicy) -> Callable[[web.Request, Any], Awaitable[web.StreamResponse]]:
    """Refuses, before anything else, a request whose Host is not one of ours (DNS rebinding)."""

    @web.middleware
    async def host(request: web.Request, handler: Any) -> web.StreamResponse:
        transport = request.transport
        if transport is not None and isinstance(transport.get_extra_info("sockname"), str):
            return await handler(request)  # a sibling worker over its private Unix socket
        try:
            policy.check_host(request)
        except GatewayError as err:
            log.info("refused a request from %s: %s", request.remote, err.message)
            return error_response(err)
        return await handler(request)

    return host


def authenticated(
    handler: Callable[[web.Request, Any, Any], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``handler(request, gateway, principal)`` for an endpoint answered in the gateway's own JSON
    errors (``/v1/conversations``): the key checked first, and every ``GatewayError`` it raises
    (a refused key, a bad field, the store down) answered as :func:`.errors.error_response`."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        gw = request.app["gateway"]
        try:
            principal = await gw.access.authenticate_http(request)
            return await handler(request, gw, principal)
        except GatewayError as err:
            return error_response(err)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped
