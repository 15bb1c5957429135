"""The gateway's process-wide state, and the hooks later layers plug into."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..config import Settings
from ..protocol.frames import Attach, Chat, Limits
from ..router import Route, Router
from ..store.base import ConversationStore
from ..upstream.http import SharedSession
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
        self.http = SharedSession(settings.connect_timeout, settings.read_timeout)
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
        self.draining = False

    # -- hooks (access control, limits and scale-out refine these) ------------
    async def authenticate_ws(self, request: web.Request) -> Any:
        """Who is connecting; raise an HTTP error to refuse before the upgrade."""
        return None

    async def authenticate_http(self, request: web.Request) -> Any:
        return None

    async def admit(self, session: Any, chat: Chat, route: Route) -> None:
        """Check limits before a generation starts (raise GatewayError to refuse)."""
        return None

    async def authorize_attach(self, session: Any, run: Run) -> None:
        return None

    async def attach_remote(self, session: Any, req: Attach) -> Run | None:
        """Find a generation this process does not hold (another instance's)."""
        if self.cluster is not None:
            return await self.cluster.attach_remote(req)  # type: ignore[return-value]
        return None

    async def aclose(self) -> None:
        await self.registry.shutdown(0)
        if self.cluster is not None:
            await self.cluster.aclose()
        await self.router.aclose()
        await self.http.aclose()
        await self.store.aclose()
