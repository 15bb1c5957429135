"""The gateway's process-wide state, and the hooks later layers plug into."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..auth.policy import AccessPolicy
from ..config import Settings
from ..metrics import Metrics
from ..protocol.errors import GatewayError
from ..protocol.frames import Attach, Chat, Limits
from ..router import Route, Router
from ..store.base import ConversationStore
from ..upstream.http import SharedSession
from .liveness import Liveness
from .relay import Registry, Run

if TYPE_CHECKING:
    from ..cluster import Cluster
    from .ws import Session

__all__ = ["Gateway"]

log = logging.getLogger("tokenwire")


def make_store(settings: Settings) -> ConversationStore:
    if settings.redis_url:
        from ..store.redis import RedisConversationStore

        return RedisConversationStore(settings.redis_url, settings.redis_prefix, settings.redis_timeout)
    if settings.db_path == ":memory:":
        from ..store.memory import MemoryConversationStore

        return MemoryConversationStore()
    from ..store.sqlite import SQLiteConversationStore

    return SQLiteConversationStore(settings.db_path)


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = Limits(settings.max_frame_bytes, settings.max_messages)
        self.http = SharedSession(settings.connect_timeout)
        self.router = Router(settings, self.http)
        self.store = make_store(settings)
        #: with ``redis_url``: shared conversations, cross-instance resume, cancel routing
        self.cluster: Cluster | None = None
        if settings.redis_url:
            from ..cluster import Cluster

            self.cluster = Cluster(settings, self.store)  # type: ignore[arg-type]
            self.registry: Registry = self.cluster.registry
        else:
            self.registry = Registry(self.store, settings.resume_retention, settings.read_timeout)
        self.sessions: set[Session] = set()
        #: pings silent sockets, drops dead ones, closes idle ones: one task for all of them
        self.liveness = Liveness(self.sessions, settings.ws_ping_interval, settings.idle_timeout)
        self.draining = False
        #: (index, count) when one of ``serve --workers`` processes
        self.worker: tuple[int, int] | None = None
        #: every worker's private Unix socket (index = worker), for /metrics of the whole gateway
        self.worker_sockets: list[str] = []
        self.metrics = Metrics(self)
        self.metrics.log_prompts = settings.log_prompts
        self.registry.on_finish.append(self.metrics.on_finish)
        #: keys, Origin checks and limits (tokenwire.auth); raises ConfigError for an unsafe bind
        self.access = AccessPolicy(settings, self)

    # -- hooks (access control, limits and scale-out refine these) ------------
    async def authenticate_ws(self, request: web.Request) -> Any:
        """Who is connecting; raise an HTTP error to refuse before the upgrade."""
        return await self.access.authenticate_ws(request)

    async def authenticate_http(self, request: web.Request) -> Any:
        return await self.access.authenticate_http(request)

    async def admit(self, session: Any, chat: Chat, route: Route) -> None:
        """Check limits before a generation starts (raise GatewayError to refuse)."""
        try:
            await self.access.admit(session, chat, route)
        except GatewayError as err:
            if err.code in ("rate_limited", "budget_exceeded"):
                self.metrics.reject(err.extra.get("limit") or err.code)
            raise

    async def authorize_attach(self, session: Any, run: Run) -> None:
        await self.access.authorize_attach(session, run)

    def frame_gate(self) -> Any:
        """A per-socket check of each client frame (frames per second), or None."""
        return self.access.frame_gate()

    async def attach_remote(self, session: Any, req: Attach) -> Run | None:
        """Find a generation this process does not hold (another instance's)."""
        if self.cluster is not None:
            return await self.cluster.attach_remote(req)  # type: ignore[return-value]
        return None

    async def aclose(self) -> None:
        await self.liveness.aclose()
        await self.registry.shutdown(0)
        if self.cluster is not None:
            await self.cluster.aclose()
        await self.router.aclose()
        await self.http.aclose()
        await self.store.aclose()
        await self.access.aclose()
