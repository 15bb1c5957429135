"""Typed client errors: one class per thing a caller can do something about.

Every error keeps the server's stable ``code``, its human ``message`` and whether
retrying can help (``retryable``), so callers can branch on a class or a code.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "BadRequestError",
    "ConnectionLostError",
    "ConversationBusyError",
    "PoolTimeoutError",
    "RateLimitError",
    "ServerError",
    "StreamExpiredError",
    "TokenwireError",
    "UpstreamError",
    "error_from_event",
]


class TokenwireError(Exception):
    """Base class: ``code`` (stable string), ``message`` (for humans), ``retryable``."""

    default_retryable = False

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = self.default_retryable if retryable is None else retryable
        self.details: dict[str, Any] = details or {}

    @property
    def retry_after(self) -> float | None:
        value = self.details.get("retry_after")
        return float(value) if isinstance(value, int | float) else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, retryable={self.retryable})"


class AuthError(TokenwireError):
    """The key was refused (HTTP 401/403 at the handshake, close 4003/1008): never retried."""


class RateLimitError(TokenwireError):
    """Too many requests (gateway limit or the provider's 429); see ``retry_after``."""

    default_retryable = True


class UpstreamError(TokenwireError):
    """The model provider failed (5xx, cut stream, timeout, bad response, refused key)."""

    default_retryable = True


class BadRequestError(TokenwireError):
    """The request itself is wrong (unknown model, bad parameter…): fix it, do not retry."""


class ConversationBusyError(TokenwireError):
    """The conversation is already generating a reply; retry after it ends."""

    default_retryable = True


class StreamExpiredError(TokenwireError):
    """A resume was impossible (stream unknown or past retention): the reply has a gap."""


class ConnectionLostError(TokenwireError):
    """The connection dropped and could not be re-established within the retry budget."""

    default_retryable = True


class ServerError(TokenwireError):
    """The gateway failed internally or is shutting down."""


class PoolTimeoutError(TokenwireError, TimeoutError):
    """No pooled connection became free within ``acquire_timeout``."""

    default_retryable = True


_BY_CODE: dict[str, type[TokenwireError]] = {
    "unauthorized": AuthError,
    "forbidden": AuthError,
    "rate_limited": RateLimitError,
    "upstream_rate_limited": RateLimitError,
    "budget_exceeded": RateLimitError,
    "conversation_busy": ConversationBusyError,
    "stream_expired": StreamExpiredError,
    "unknown_stream": StreamExpiredError,
    "bad_request": BadRequestError,
    "invalid_json": BadRequestError,
    "unknown_type": BadRequestError,
    "unsupported_frame": BadRequestError,
    "frame_too_large": BadRequestError,
    "unknown_model": BadRequestError,
    "duplicate_id": BadRequestError,
    "not_found": BadRequestError,
    "upstream_bad_request": BadRequestError,
    "internal_error": ServerError,
    "shutting_down": ServerError,
    "connection_lost": ConnectionLostError,
}


def error_from_event(event: dict[str, Any]) -> TokenwireError:
    """Map a protocol ``error`` event to the matching exception class (upstream_* → UpstreamError)."""
    code = str(event.get("code") or "internal_error")
    message = str(event.get("message") or code)
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = UpstreamError if code.startswith("upstream_") else ServerError
    retryable = event.get("retryable")
    details = {k: v for k, v in event.items() if k not in ("type", "code", "message", "retryable")}
    return cls(code, message, retryable=bool(retryable) if retryable is not None else None, details=details)
