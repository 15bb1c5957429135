"""One error type for everything a client can be told, in one flat shape.

Every failure a client sees becomes ``{"type":"error","id":…,"code":…,"message":…,
"retryable":…}`` on a WebSocket, or an OpenAI-style error object over HTTP. Codes
are stable strings (see docs/protocol.md); messages are for humans.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["HTTP_STATUS", "GatewayError", "set_redactor"]

#: Masks secrets (provider keys) in messages before they reach a client; set by tokenwire.auth.
_redact: Callable[[str], str] | None = None


def set_redactor(fn: Callable[[str], str] | None) -> None:
    """Install the function every client-bound error message passes through."""
    global _redact
    _redact = fn


#: HTTP status used when an error code is returned over plain HTTP.
HTTP_STATUS: dict[str, int] = {
    "bad_request": 400,
    "invalid_json": 400,
    "unsupported_frame": 400,
    "unknown_type": 400,
    "frame_too_large": 413,
    "unknown_model": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "unauthorized": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "budget_exceeded": 402,
    "conversation_busy": 409,
    "too_many_conversations": 403,
    "duplicate_id": 409,
    "conflict": 409,  #: the admin API: a key name in use, a revoked key edited
    "unknown_stream": 404,
    "stream_expired": 410,
    "upstream_error": 502,
    "upstream_rate_limited": 429,
    "upstream_auth": 502,
    "upstream_bad_request": 400,
    "upstream_bad_response": 502,
    "upstream_unavailable": 503,
    "upstream_timeout": 504,
    "slow_consumer": 408,
    "request_timeout": 408,
    "shutting_down": 503,
    "store_unavailable": 503,
    "internal_error": 500,
}


class GatewayError(Exception):
    """An error with a stable ``code``, a message and whether retrying can help.

    ``status`` is the upstream HTTP status when the error came from a provider
    (kept so clients can tell a provider 429 from a gateway limit).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.extra = extra or {}

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def to_event(self, id: str | None) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "error",
            "id": id,
            "code": self.code,
            "message": self.message if _redact is None else _redact(self.message),
            "retryable": self.retryable,
        }
        if self.status is not None:
            event["upstream_status"] = self.status
        event.update(self.extra)
        return event

    def to_openai(self) -> dict[str, Any]:
        """The error as the OpenAI API shapes it (``{"error": {...}}``)."""
        kind = {
            "unauthorized": "authentication_error",
            "forbidden": "permission_error",
            "rate_limited": "rate_limit_error",
            "budget_exceeded": "insufficient_quota",
            "unknown_model": "invalid_request_error",
        }.get(self.code, "invalid_request_error" if self.http_status < 500 else "api_error")
        return {
            "error": {
                "message": self.message if _redact is None else _redact(self.message),
                "type": kind,
                "param": self.extra.get("param") or _param_of(self),
                "code": self.code,
                "retryable": self.retryable,
            }
        }

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> GatewayError:
        """The error an ``error`` event (as logged or sent) describes: the inverse of :meth:`to_event`."""
        extra = {k: v for k, v in event.items() if k not in _EVENT_FIELDS}
        status = event.get("upstream_status")
        return cls(
            str(event.get("code") or "internal_error"),
            str(event.get("message") or ""),
            retryable=bool(event.get("retryable")),
            status=status if isinstance(status, int) else None,
            extra=extra,
        )

    def __repr__(self) -> str:
        return f"GatewayError({self.code!r}, {self.message!r}, retryable={self.retryable})"


_EVENT_FIELDS = frozenset({"type", "id", "seq", "code", "message", "retryable", "upstream_status"})


#: the field a request error's message starts with: ``"top_p" must be …``, ``messages[1].tool_calls …``
_PARAM = re.compile(r'^(?:"([A-Za-z_][\w.]*)"|(messages\[\d+\][\w.\[\]]*|tools\[\d+\][\w.\[\]]*))')


def _param_of(err: GatewayError) -> str | None:
    """OpenAI's ``param`` for a refused request: the field its message names first, if any."""
    if err.code not in ("bad_request", "frame_too_large"):
        return None
    m = _PARAM.match(err.message)
    return None if m is None else (m.group(1) or m.group(2))
