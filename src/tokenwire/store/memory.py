"""In-process conversation store (``db_path = ":memory:"``; tests, ephemeral use)."""

from __future__ import annotations

import time
from typing import Any

from .base import MAX_TITLE, Message, StoreCaps, Sweeper, message_bytes, owner_of, plan_drop, summary

__all__ = ["MemoryConversationStore"]


class MemoryConversationStore(Sweeper):
    def __init__(self, caps: StoreCaps | None = None) -> None:
        self.caps = caps or StoreCaps()
        self._system: dict[str, str] = {}
        self._turns: dict[str, list[Message]] = {}
        self._titles: dict[str, str] = {}
        self._updated: dict[str, float] = {}

    def _live(self, conversation_id: str) -> bool:
        """Whether it is stored and unexpired (an expired one is deleted here, on read)."""
        updated = self._updated.get(conversation_id)
        if updated is None:
            return False
        if updated < self.caps.cutoff():
            self._forget(conversation_id)
            return False
        return True

    async def history(self, conversation_id: str) -> list[Message]:
        if not self._live(conversation_id):
            return []
        system = self._system.get(conversation_id)
        head = [{"role": "system", "content": system}] if system is not None else []
        return head + list(self._turns.get(conversation_id, ()))

    async def append(self, conversation_id: str, messages: list[Message], system: str | None = None) -> int:
        self._start_sweeper()
        self._live(conversation_id)  # an expired conversation starts afresh
        if system is not None:
            self._system[conversation_id] = system
        turns = self._turns.setdefault(conversation_id, [])
        turns.extend(messages)
        self._updated[conversation_id] = time.time()
        caps = self.caps
        drop = 0
        if caps.max_messages or caps.max_bytes:
            sizes = [(str(m.get("role")), message_bytes(m)) for m in turns]
            drop = plan_drop(sizes, len(messages), caps.max_messages, caps.max_bytes)
            del turns[:drop]
        return drop

    def _forget(self, conversation_id: str) -> bool:
        found = conversation_id in self._turns or conversation_id in self._system
        self._turns.pop(conversation_id, None)
        self._system.pop(conversation_id, None)
        self._titles.pop(conversation_id, None)
        self._updated.pop(conversation_id, None)
        return found

    async def delete(self, conversation_id: str) -> bool:
        return self._live(conversation_id) and self._forget(conversation_id)

    async def list(self, owner: str, limit: int = 100) -> list[dict[str, Any]]:
        cutoff = self.caps.cutoff()
        ids = sorted(
            (c for c, u in self._updated.items() if owner_of(c) == owner and u >= cutoff),
            key=lambda c: -self._updated[c],
        )
        out = []
        for cid in ids[:limit]:
            first = next((m.get("content") for m in self._turns.get(cid, ()) if m.get("role") == "user"), None)
            out.append(summary(cid, self._titles.get(cid), first, self._updated[cid]))
        return out

    async def count(self, owner: str, besides: str | None = None) -> int:
        cutoff = self.caps.cutoff()
        return sum(1 for c, u in self._updated.items() if u >= cutoff and c != besides and owner_of(c) == owner)

    async def truncate(self, conversation_id: str, keep: int) -> bool:
        if not self._live(conversation_id):
            return False
        del self._turns.setdefault(conversation_id, [])[max(0, keep) :]
        self._updated[conversation_id] = time.time()
        return True

    async def set_title(self, conversation_id: str, title: str) -> bool:
        if not self._live(conversation_id):
            return False
        self._titles[conversation_id] = title[:MAX_TITLE]
        return True

    async def sweep(self) -> int:
        cutoff = self.caps.cutoff()
        old = [c for c, u in self._updated.items() if u < cutoff]
        for cid in old:
            self._forget(cid)
        return len(old)

    async def aclose(self) -> None:
        await self._stop_sweeper()
