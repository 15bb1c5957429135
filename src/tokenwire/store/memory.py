"""In-process conversation store (``db_path = ":memory:"``; tests, ephemeral use)."""

from __future__ import annotations

from .base import Message

__all__ = ["MemoryConversationStore"]


class MemoryConversationStore:
    def __init__(self) -> None:
        self._system: dict[str, str] = {}
        self._turns: dict[str, list[Message]] = {}

    async def history(self, conversation_id: str) -> list[Message]:
        system = self._system.get(conversation_id)
        head = [{"role": "system", "content": system}] if system is not None else []
        return head + list(self._turns.get(conversation_id, ()))

    async def append(self, conversation_id: str, messages: list[Message], system: str | None = None) -> None:
        if system is not None:
            self._system[conversation_id] = system
        self._turns.setdefault(conversation_id, []).extend(messages)

    async def delete(self, conversation_id: str) -> bool:
        found = conversation_id in self._turns or conversation_id in self._system
        self._turns.pop(conversation_id, None)
        self._system.pop(conversation_id, None)
        return found

    async def aclose(self) -> None:
        return None
