"""tokenwire: stream LLM chat tokens to clients over WebSocket and SSE."""

from __future__ import annotations

from .version import __version__

__all__ = [
    "AsyncClient",
    "AuthError",
    "BadRequestError",
    "Client",
    "ClientPool",
    "Completion",
    "ConnectionLostError",
    "ConversationBusyError",
    "PoolTimeoutError",
    "RateLimitError",
    "ServerError",
    "StreamExpiredError",
    "TokenwireError",
    "UpstreamError",
    "__version__",
]

_CLIENT_NAMES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> object:
    """The client is imported on first use, so ``tokenwire serve`` does not load it."""
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'tokenwire' has no attribute {name!r}")
