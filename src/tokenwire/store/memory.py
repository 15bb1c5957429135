"""In-process conversation store (``db_path = ":memory:"``; tests, ephemeral use)."""

from __future__ import annotations

import time
from typing import Any

from .base import MAX_TITLE, Message, owner_of, summary

__all__ = ["MemoryConversationStore"]


class MemoryConversationStore:
    def __init__(self) -> None:
        self._system: dict[str, str] = {}
        self._turns: dict[str, list[Message]] = {}
        self._titles: dict[str, str] = {}
        self._updated: dict[str, float] = {}

    async def history(self, conversation_id: str) -> list[Message]:
        system = self._system.get(conversation_id)
        head = [{"role": "system", "content": system}] if system is not None else []
        return head + list(self._turns.get(conversation_id, ()))

    async def append(self, conversation_id: str, messages: list[Message], system: str | None = None) -> None:
        if system is not None:
            self._system[conversation_id] = system
        self._turns.setdefault(conversation_id, []).extend(messages)
        self._updated[conversation_id] = time.time()

    async def delete(self, conversation_id: str) -> bool:
        found = conversation_id in self._turns or conversation_id in self._system
        self._turns.pop(conversation_id, None)
        self._system.pop(conversation_id, None)
        self._titles.pop(conversation_id, None)
        self._updated.pop(conversation_id, None)
        return found

    async def list(self, owner: str, limit: int = 100) -> list[dict[str, Any]]:
        ids = sorted((c for c in self._updated if owner_of(c) == owner), key=lambda c: -self._updated[c])
        out = []
        for cid in ids[:limit]:
            first = next((m.get("content") for m in self._turns.get(cid, ()) if m.get("role") == "user"), None)
            out.append(summary(cid, self._titles.get(cid), first, self._updated[cid]))
        return out

    async def truncate(self, conversation_id: str, keep: int) -> bool:
        if conversation_id not in self._updated:
            return False
        del self._turns.setdefault(conversation_id, [])[max(0, keep) :]
        self._updated[conversation_id] = time.time()
        return True

    async def set_title(self, conversation_id: str, title: str) -> bool:
        if conversation_id not in self._updated:
            return False
        self._titles[conversation_id] = title[:MAX_TITLE]
        return True

    async def aclose(self) -> None:
        return None
