"""The one mapping from a :class:`GatewayError` to an HTTP answer.

Every refusal over HTTP (a handler's error, a WebSocket handshake refused before
the upgrade, ``/metrics`` without a key) goes through :func:`error_response`:
the status comes from the error's code (``protocol.errors.HTTP_STATUS``), the
body from the caller's dialect (OpenAI's ``{"error": {...}}`` unless another is
given), and the headers a client acts on are set the same way everywhere:
``WWW-Authenticate`` on 401, ``Retry-After`` (whole seconds, at least 1) when
the error says when to retry.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..dialects import anthropic_messages
from ..protocol.errors import GatewayError

__all__ = ["api_route_errors", "error_headers", "error_response"]


def error_headers(err: GatewayError) -> dict[str, str]:
    headers: dict[str, str] = {}
    if err.code == "unauthorized":
        headers["WWW-Authenticate"] = 'Bearer realm="tokenwire"'
    retry_after = err.extra.get("retry_after")
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(float(retry_after))))
    return headers


def error_response(err: GatewayError, body: dict[str, Any] | None = None) -> web.Response:
    """``err`` as an HTTP response; ``body`` is the dialect's error object (default OpenAI's)."""
    resp = web.Response(
        body=orjson.dumps(err.to_openai() if body is None else body),
        status=err.http_status,
        content_type="application/json",
        headers=error_headers(err),
    )
    if err.code == "request_timeout":  # the rest of the body may still come: the connection is done
        resp.force_close()
    return resp


#: the API paths whose clients read JSON errors: Anthropic's shape under /v1/messages, else OpenAI's
_API_PREFIXES = ("/v1/", "/api/")


@web.middleware
async def api_route_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """No route for an API path (a GET on a POST route, a trailing slash, a typo): a JSON error.

    aiohttp answers those in plain text (``405: Method Not Allowed``), which an SDK cannot parse
    into its error class. Only routing failures are rewritten (a handler's own answers, and the
    page and admin routes, are left alone); a 405 keeps aiohttp's ``Allow`` header.
    """
    failed = getattr(request.match_info, "http_exception", None)
    if failed is None or not request.path.startswith(_API_PREFIXES):
        return await handler(request)
    if failed.status == 405:
        err = GatewayError(
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path[:200]} (allowed: {failed.headers.get('Allow', '')})",
        )
    else:
        err = GatewayError("not_found", f"no such endpoint: {request.method} {request.path[:200]}")
    body = anthropic_messages.error_body(err) if request.path.startswith("/v1/messages") else None
    resp = error_response(err, body)
    if "Allow" in failed.headers:
        resp.headers["Allow"] = failed.headers["Allow"]
    return resp
