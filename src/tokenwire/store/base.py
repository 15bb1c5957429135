"""Conversation storage: one interface, chosen by configuration (SQLite, memory, Redis)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "ConversationStore",
    "StoreCaps",
    "Sweeper",
    "message_bytes",
    "owner_of",
    "plan_drop",
    "plan_drop_from",
    "stop_tasks",
    "summary",
]

log = logging.getLogger("tokenwire.store")

Message = dict[str, Any]
#: the longest title a conversation may be given (longer ones are cut)
MAX_TITLE = 200


@dataclass(frozen=True, slots=True)
class StoreCaps:
    """How much one stored conversation may hold, and how long it is kept (0: no limit).

    Without these a conversation grew for ever (1,200 small turns stored 2,400 messages) and was
    never forgotten. ``max_messages`` / ``max_bytes`` bound what is *stored* (runtime.history
    bounds what is *sent*): past them the oldest turns are dropped at the next append, as a
    chat with a sliding window does, so a long conversation goes on working. ``ttl`` seconds
    after its last stored turn a conversation is gone (Redis EXPIRE; SQLite and memory check
    ``updated`` on read and sweep periodically).
    """

    max_messages: int = 0
    max_bytes: int = 0
    ttl: float = 0.0

    def cutoff(self, now: float | None = None) -> float:
        """Conversations last updated before this are expired (``-inf`` without a TTL)."""
        if self.ttl <= 0:
            return float("-inf")
        return (time.time() if now is None else now) - self.ttl


def message_bytes(message: Message) -> int:
    """The UTF-8 bytes of a message's text (the parts' text for a list of content parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return len(content.encode("utf-8", "surrogatepass"))
    if isinstance(content, list):
        return sum(len(str(p.get("text", "")).encode("utf-8", "surrogatepass")) for p in content if isinstance(p, dict))
    return 0


def plan_drop(turns: list[tuple[str, int]], n_new: int, max_messages: int = 0, max_bytes: int = 0) -> int:
    """How many of the oldest stored messages to drop so that ``turns`` fits the caps.

    ``turns`` is (role, size) of every stored message after the system prompt, oldest first,
    the ``n_new`` just appended last. The newest turn is never dropped, even when it alone is
    over a cap (it is bounded already: max_history_bytes and max_output_tokens). After a drop
    the history starts at a question: an answer left without its question goes too.
    """
    total = sum(size for _, size in turns)
    return plan_drop_from(iter(turns), len(turns), total, n_new, max_messages, max_bytes)


def plan_drop_from(
    oldest: Iterator[tuple[str, int]], count: int, total: int, n_new: int, max_messages: int, max_bytes: int
) -> int:
    """:func:`plan_drop` reading (role, size) from the oldest only as far as needed.

    ``count`` and ``total`` are the messages' number and size, known beforehand (SQLite: one
    aggregate), so a store at its cap reads a few rows, not the whole conversation, per append.
    """
    droppable = max(0, count - n_new)
    drop = 0
    while drop < droppable and ((max_messages and count - drop > max_messages) or (max_bytes and total > max_bytes)):
        total -= next(oldest)[1]
        drop += 1
    if drop:
        for role, _ in oldest:
            if drop >= droppable or role == "user":
                break
            drop += 1
    return drop


class Sweeper:
    """One task per store that deletes expired conversations now and then (never per request).

    Started by the first write (a store is built before the event loop runs); stopped by
    ``aclose``. Subclasses define ``caps`` and ``async sweep() -> int``.
    """

    caps: StoreCaps
    _sweeper: asyncio.Task[None] | None = None

    def _start_sweeper(self) -> None:
        if self._sweeper is None and self.caps.ttl > 0:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(), name="tokenwire-store-sweep")

    @property
    def sweep_interval(self) -> float:
        return min(600.0, max(0.5, self.caps.ttl / 10))

    async def sweep(self) -> int: ...

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                n = await self.sweep()
            except Exception as exc:  # never let the sweeper die (a full disk, a store that is down)
                log.warning("could not delete expired conversations: %s: %s", type(exc).__name__, exc)
            else:
                if n:
                    log.info("deleted %d expired conversation(s)", n)

    async def _stop_sweeper(self) -> None:
        task, self._sweeper = self._sweeper, None
        if task is not None:
            await stop_tasks([task])


async def stop_tasks(tasks: list[asyncio.Task[Any]], patience: float = 5.0) -> None:
    """Cancel background tasks and wait for them, cancelling again while they linger.

    A cancel that lands inside a client library can be swallowed (redis-py may retry or turn
    it into an error), and a loop would then go on for ever: a worker hung at shutdown.
    """
    deadline = time.monotonic() + patience
    pending = [t for t in tasks if not t.done()]
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, still = await asyncio.wait(pending, timeout=0.5)
        pending = list(still)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: never "exception was never retrieved"
    if pending:
        log.warning("%d background task(s) did not stop", len(pending))


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

    async def append(self, conversation_id: str, messages: list[Message], system: str | None = None) -> int:
        """Add turns; ``system`` (if given) becomes the one system prompt.

        Returns how many of the oldest messages were dropped to stay within :class:`StoreCaps`.
        """
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

    async def count(self, owner: str, besides: str | None = None) -> int:
        """How many unexpired conversations :func:`owner_of` ``owner`` has stored, not counting ``besides``."""
        ...

    async def aclose(self) -> None: ...
