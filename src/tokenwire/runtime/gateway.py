"""The gateway's process-wide state, and the one path every chat takes.

:meth:`Gateway.start_chat` is what the WebSocket, SSE, non-streamed and polling
entry points all call: resolve the model to a route, admit the request (keys,
limits, budgets), then begin its :class:`~.relay.Run`. The entry points differ
only in how they read a request and how they write its events (a dialect).

Access control and scale-out plug in from the layers above through two small
interfaces (:class:`Admission` and :class:`RemoteStreams`): the server's
composition root (``server.app.build_gateway``) builds them and hands them in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from ..config import ConfigError, Settings, StartupError
from ..protocol.errors import GatewayError
from ..protocol.frames import Attach, Chat, Limits
from ..store.base import ConversationStore, StoreCaps
from ..upstream.http import SharedSession
from .metrics import Metrics
from .ownership import owns
from .relay import Registry, Run, stream_key
from .routing import Route, Router

__all__ = ["Admission", "Gateway", "OpenAdmission", "RemoteStreams", "make_store"]

log = logging.getLogger("tokenwire")

#: admission refusals counted as limit rejections in /metrics
_LIMIT_CODES = ("rate_limited", "budget_exceeded")


class Admission(Protocol):
    """Who is asking, and what they may start (tokenwire.auth.AccessPolicy is the real one)."""

    async def authenticate_http(self, request: Any) -> Any:
        """The principal behind an HTTP request; raise GatewayError to refuse it."""
        ...

    async def authenticate_ws(self, request: Any) -> Any:
        """The principal behind a WebSocket handshake; raise GatewayError to refuse it."""
        ...

    def frame_gate(self) -> Any:
        """A per-socket check of each client frame (frames per second), or None."""
        ...

    async def admit(self, principal: Any, chat: Chat, route: Route, sent: list[dict[str, Any]] | None = None) -> None:
        """Raise GatewayError to refuse; otherwise the chat is charged to ``principal``.

        ``sent`` is what will go upstream: the request's messages with the stored history that fits.
        """
        ...

    def release(self, principal: Any, chat: Chat) -> None:
        """An admitted chat never started: undo what :meth:`admit` counted."""
        ...

    async def aclose(self) -> None: ...


class OpenAdmission:
    """Admits everything (a gateway built without an access policy, e.g. in unit tests)."""

    async def authenticate_http(self, request: Any) -> Any:
        return None

    async def authenticate_ws(self, request: Any) -> Any:
        return None

    def frame_gate(self) -> Any:
        return None

    async def admit(self, principal: Any, chat: Chat, route: Route, sent: list[dict[str, Any]] | None = None) -> None:
        return None

    def release(self, principal: Any, chat: Chat) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RemoteStreams(Protocol):
    """Generations that other instances run (tokenwire.cluster.Cluster is the real one)."""

    async def attach_remote(self, req: Attach, key: str) -> Any:
        """A follower of another instance's generation registered as ``key`` (relay.stream_key), or None."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def health(self) -> dict[str, Any]: ...


def store_caps(settings: Settings) -> StoreCaps:
    """What a stored conversation may hold and how long (docs/security.md); a negative setting is refused."""
    for name in (
        "max_conversation_messages",
        "max_conversation_bytes",
        "conversation_ttl",
        "max_conversations_per_key",
    ):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{name} must be 0 (no limit) or more, not {getattr(settings, name)}")
    return StoreCaps(settings.max_conversation_messages, settings.max_conversation_bytes, settings.conversation_ttl)


def make_store(settings: Settings) -> ConversationStore:
    """The conversation store the settings ask for: Redis, memory or SQLite (the default)."""
    caps = store_caps(settings)
    if settings.redis_url:
        require_redis()
        from ..store.redis import RedisConversationStore

        try:
            return RedisConversationStore(settings.redis_url, settings.redis_prefix, settings.redis_timeout, caps=caps)
        except ValueError as exc:  # redis-py's "Redis URL must specify one of the following schemes…"
            raise ConfigError(
                f"redis_url is not a Redis URL ({exc}); use redis://HOST:6379/0, rediss://… or unix:///PATH"
            ) from None
    if settings.db_path == ":memory:":
        from ..store.memory import MemoryConversationStore

        return MemoryConversationStore(caps)
    import sqlite3

    from ..store.sqlite import SQLiteConversationStore

    try:
        return SQLiteConversationStore(settings.db_path, caps)
    except (OSError, sqlite3.Error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise StartupError(
            f"cannot open the conversation database {settings.db_path} ({reason}); "
            'point db_path (--db, TOKENWIRE_DB) at a writable folder, or use ":memory:" to keep nothing'
        ) from None


def require_redis() -> None:
    """redis_url needs the redis package (the ``redis`` extra): say so in one line if it is missing."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ConfigError(
            "redis_url is set, but the redis package is not installed: pip install 'tokenwire[redis]'"
        ) from None


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        store: ConversationStore | None = None,
        registry: Registry | None = None,
        access: Admission | None = None,
        cluster: RemoteStreams | None = None,
    ) -> None:
        self.settings = settings
        #: runtime.telemetry.Telemetry when OpenTelemetry export is on (runtime.tracing.start_telemetry)
        self.telemetry: Any = None
        self.limits = Limits(settings.max_frame_bytes, settings.max_messages, settings.max_output_tokens)
        self.http = SharedSession(settings.connect_timeout)
        self.router = Router(settings, self.http)
        self.store = store if store is not None else make_store(settings)
        self.registry = (
            registry if registry is not None else Registry(self.store, settings.resume_retention, settings.read_timeout)
        )
        self.registry.max_output_tokens = settings.max_output_tokens
        self.registry.max_history_messages = settings.max_history_messages
        self.registry.max_history_bytes = settings.max_history_bytes
        self.registry.max_conversations = settings.max_conversations_per_key
        self.access: Admission = access if access is not None else OpenAdmission()
        #: with ``redis_url``: shared conversations, cross-instance resume, cancel routing
        self.cluster = cluster
        #: the open client sockets (the server layer adds and removes them)
        self.sessions: set[Any] = set()
        self.draining = False
        #: (index, count) when one of ``serve --workers`` processes
        self.worker: tuple[int, int] | None = None
        #: every worker's private Unix socket (index = worker), for /metrics of the whole gateway
        self.worker_sockets: list[str] = []
        self.metrics = Metrics(self.registry, self.sessions)
        self.metrics.log_prompts = settings.log_prompts
        self.registry.on_finish.append(self.metrics.on_finish)
        self.metrics.watch_store(self.registry)
        # Redis round trips: the conversation store's link (shared by the cluster and its shipper), the ledger's
        self.metrics.watch_redis(getattr(self.store, "link", None), "store")
        self.metrics.watch_redis(getattr(getattr(self.access, "ledger", None), "link", None), "ledger")

    # -- the one path for a chat ----------------------------------------------
    async def start_chat(
        self,
        principal: Any,
        chat: Chat,
        *,
        conversation_id: str | None = None,
        resumable: bool = False,
    ) -> Run:
        """Resolve, admit and begin a generation; its events go to whoever subscribes to the run.

        Raises :class:`GatewayError` (unknown model, a limit, a busy conversation, …) with the
        chat's id in ``extra["id"]``, so a socket can tell which request was refused.
        """
        admitted = False

        async def admit(sent: list[dict[str, Any]]) -> None:
            # called by Registry.begin once the stored history is loaded and fitted, so that a budget
            # or a TPM limit counts the prompt that is really sent, history included
            nonlocal admitted
            try:
                await self.access.admit(principal, chat, route, sent)
            except GatewayError as err:
                if err.code in _LIMIT_CODES:
                    self.metrics.reject(err.extra.get("limit") or err.code)
                raise
            admitted = True

        try:
            route = self.router.resolve(chat.model)
            if chat.owner is None:
                chat.owner = principal  # the conversation is looked up under its key before admission
            try:
                return await self.registry.begin(chat, route, conversation_id, resumable, admit=admit)
            except BaseException:
                if admitted:
                    self.access.release(principal, chat)
                raise
        except GatewayError as err:
            err.extra.setdefault("id", chat.id)
            raise

    async def find_stream(self, principal: Any, req: Attach, *, resume: bool = True) -> Any:
        """The generation an ``attach`` names, here or on another instance, if ``principal`` owns it.

        ``resume``: the caller attaches to follow it (a "resume" on its span); False to look it
        up for something else (a newer reply superseding it).

        Raises ``stream_expired`` when there is none. Another key's generation gets exactly the
        same answer (stream ids are scoped per key, see relay.stream_key): an answer that
        differed would tell a caller which ids exist.
        """
        run: Any = self.registry.get(req.stream_id, principal)
        if run is None and self.cluster is not None:
            run = await self.cluster.attach_remote(req, stream_key(req.stream_id, principal))
            if run is None and getattr(principal, "key_id", None):
                run = await self.cluster.attach_remote(req, req.stream_id)  # started before keys existed
        if run is None or not owns(principal, run):
            raise GatewayError(
                "stream_expired",
                f"stream {req.stream_id} is unknown or past its retention window; it cannot be resumed",
                extra={"id": req.id, "stream_id": req.stream_id},
            )
        if resume and isinstance(run, Run) and not run.gen.ended:
            run.resumes.append(time.time_ns())  # a "resume" event on its span (runtime.telemetry)
        return run

    async def aclose(self) -> None:
        await self.registry.shutdown(0)
        if self.cluster is not None:
            await self.cluster.aclose()
        await self.router.aclose()
        await self.http.aclose()
        await self.store.aclose()
        await self.access.aclose()
        if self.telemetry is not None:  # the exporters' last POSTs block: off the loop
            await asyncio.to_thread(self.telemetry.shutdown)
