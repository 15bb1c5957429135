"""Conversation storage: one interface, chosen by configuration (SQLite, memory, Redis)."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["ConversationStore"]

Message = dict[str, Any]


class ConversationStore(Protocol):
    async def history(self, conversation_id: str) -> list[Message]:
        """The stored messages, system prompt first; ``[]`` for an unknown id."""
        ...

    async def append(self, conversation_id: str, messages: list[Message], system: str | None = None) -> None:
        """Add turns; ``system`` (if given) becomes the one system prompt."""
        ...

    async def delete(self, conversation_id: str) -> bool: ...

    async def aclose(self) -> None: ...
