"""The contract between the relay and a model provider.

A provider turns a :class:`ChatCall` into an :class:`UpstreamStream`, which
yields provider-neutral events (see :mod:`tokenwire.protocol.events`) one network
read at a time. The relay never sees a provider's wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..protocol.errors import GatewayError
from ..protocol.events import Event

__all__ = ["ChatCall", "Provider", "UpstreamStream", "http_error"]


@dataclass(slots=True)
class ChatCall:
    """One chat completion to ask a provider for."""

    model: str  #: the provider's own model id
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)


class UpstreamStream(Protocol):
    """An open streamed response."""

    async def read(self) -> list[Event] | None:
        """Events decoded from the next network read; ``None`` once the stream has ended."""
        ...

    def close(self) -> None:
        """Abort now: the HTTP connection is closed, not returned to the pool."""
        ...


class Provider(Protocol):
    name: str  #: e.g. "openai", "holysheep", "simulated"
    simulated: bool

    async def start(self, call: ChatCall) -> UpstreamStream:
        """Send the request; raise :class:`GatewayError` if the provider refuses it."""
        ...

    async def aclose(self) -> None: ...


_STATUS_CODES = {
    400: ("upstream_bad_request", False),
    401: ("upstream_auth", False),
    403: ("upstream_auth", False),
    404: ("upstream_bad_request", False),
    408: ("upstream_timeout", True),
    409: ("upstream_error", True),
    413: ("upstream_bad_request", False),
    422: ("upstream_bad_request", False),
    429: ("upstream_rate_limited", True),
}


def http_error(provider: str, status: int, message: str, retry_after: float | None = None) -> GatewayError:
    """Map a provider's HTTP error status to a gateway error, keeping status and message."""
    code, retryable = _STATUS_CODES.get(status, ("upstream_error", status >= 500))
    extra: dict[str, Any] = {"provider": provider}
    if retry_after is not None:
        extra["retry_after"] = retry_after
    if status in (401, 403):
        message = f"{message} (the gateway's key for {provider} was refused: check its configuration)"
    return GatewayError(
        code,
        f"{provider} returned HTTP {status}: {message}",
        retryable=retryable,
        status=status,
        extra=extra,
    )
