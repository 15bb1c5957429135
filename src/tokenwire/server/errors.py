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

from ..protocol.errors import GatewayError

__all__ = ["error_headers", "error_response"]


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
