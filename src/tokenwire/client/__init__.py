"""The Python client: AsyncClient (multiplexed, resumable), Client (blocking) and ClientPool."""

from __future__ import annotations

from .core import DEFAULT_URL, AsyncClient, Completion, Conversation, TokenStream, backoff_delay
from .errors import (
    AuthError,
    BadRequestError,
    ConnectionLostError,
    ConversationBusyError,
    PoolTimeoutError,
    RateLimitError,
    ServerError,
    StreamExpiredError,
    TokenwireError,
    UpstreamError,
    error_from_event,
)
from .pool import ClientPool, PooledStream
from .sync import Client, SyncConversation, SyncTokenStream

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "AuthError",
    "BadRequestError",
    "Client",
    "ClientPool",
    "Completion",
    "ConnectionLostError",
    "Conversation",
    "ConversationBusyError",
    "PoolTimeoutError",
    "PooledStream",
    "RateLimitError",
    "ServerError",
    "StreamExpiredError",
    "SyncConversation",
    "SyncTokenStream",
    "TokenStream",
    "TokenwireError",
    "UpstreamError",
    "backoff_delay",
    "error_from_event",
]
