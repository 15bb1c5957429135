"""Conversation storage: one interface, chosen by configuration (SQLite, memory, Redis)."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["ConversationStore", "owner_of", "summary"]

Message = dict[str, Any]
#: the longest title a conversation may be given (longer ones are cut)
MAX_TITLE = 200


def owner_of(conversation_id: str) -> str:
    """The owner part of a stored id: ``k/<key_id>/`` (runtime.relay.conversation_key), or ``""`` in open mode."""
    if conversation_id.startswith("k/"):
        end = conversation_id.find("/", 2)
        if end > 2:
            return conversation_id[: end + 1]
    return ""


def summary(conversation_id: str, title: str | None, first_user: Any, updated: float | None) -> dict[str, Any]:
    """One row of a conversation list: its stored id, its title (or the start of its first question)."""
    if not title:
        if isinstance(first_user, list):  # content parts
            first_user = " ".join(str(p.get("text", "")) for p in first_user if isinstance(p, dict))
        title = " ".join(str(first_user or "").split())[:80] or None
    return {"id": conversation_id, "title": title, "updated": updated}


class ConversationStore(Protocol):
    async def history(self, conversation_id: str) -> list[Message]:
        """The stored messages, system prompt first; ``[]`` for an unknown id."""
        ...

    async def append(self, conversation_id: str, messages: list[Message], system: str | None = None) -> None:
        """Add turns; ``system`` (if given) becomes the one system prompt."""
        ...

    async def delete(self, conversation_id: str) -> bool: ...

    async def list(self, owner: str, limit: int = 100) -> list[dict[str, Any]]:
        """The conversations whose :func:`owner_of` is ``owner``, most recently updated first (:func:`summary`)."""
        ...

    async def set_title(self, conversation_id: str, title: str) -> bool:
        """Name a stored conversation; False when there is none with that id."""
        ...

    async def truncate(self, conversation_id: str, keep: int) -> bool:
        """Keep the system prompt and the first ``keep`` turns (regenerate, edit and resend); False if unknown."""
        ...

    async def aclose(self) -> None: ...
