"""The contract between the relay and a model provider.

A provider turns a :class:`ChatCall` into an :class:`UpstreamStream`, which
yields provider-neutral events (see :mod:`tokenwire.protocol.events`) one network
read at a time. The relay never sees a provider's wire format.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from ..protocol import events as ev
from ..protocol.errors import GatewayError
from ..protocol.events import Event
from ..protocol.sse import SSEDecoder, SSEError

__all__ = ["ChatCall", "Provider", "StreamParser", "UpstreamStream", "http_error", "retry_after_seconds"]


@dataclass(slots=True)
class ChatCall:
    """One chat completion to ask a provider for."""

    model: str  #: the provider's own model id
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    #: extra request headers for this one call (the W3C ``traceparent`` of its attempt, when tracing)
    headers: dict[str, str] | None = None
    #: the generation's trace ids (runtime.tracing.TraceIds) when tracing is on: each attempt gets a span id
    trace: Any = None


class StreamParser:
    """Base of the pure provider parsers (bytes in, events out, no I/O).

    It owns the SSE decoding, the end-of-stream flush and the malformed-event error;
    a subclass says what one event means in :meth:`_handle`.
    """

    __slots__ = ("_sse", "done", "finished", "provider")

    unit = "chunk"  #: what the provider calls one event, for error messages

    def __init__(self, provider: str) -> None:
        self._sse = SSEDecoder()
        self.provider = provider
        self.done = False  #: the provider's own end marker seen
        self.finished = False  #: a finish reason seen

    def feed(self, data: bytes) -> list[Event]:
        try:
            sse_events = self._sse.feed(data)
        except SSEError as exc:
            return [(ev.ERROR, GatewayError("upstream_bad_response", str(exc), retryable=True))]
        if not sse_events:
            return []
        out: list[Event] = []
        for name, payload in sse_events:
            self._handle(name, payload, out)
        return out

    def close(self) -> list[Event]:
        out: list[Event] = []
        for name, payload in self._sse.close():
            self._handle(name, payload, out)
        return out

    def _handle(self, name: str, data: bytes, out: list[Event]) -> None:
        raise NotImplementedError

    def _bad(self, what: str) -> GatewayError:
        return GatewayError(
            "upstream_bad_response",
            f"{self.provider} sent a malformed stream {self.unit} ({what})",
            retryable=True,
            extra={"provider": self.provider},
        )


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


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long a provider asks us to wait: ``retry-after-ms`` (Azure OpenAI), else
    ``Retry-After`` as seconds or as an HTTP date (RFC 9110 §10.2.3). None if absent or unreadable."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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
