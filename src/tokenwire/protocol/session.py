"""The server side of protocol v1 on one socket, as a machine without I/O.

:class:`V1Session` decides what a client's frames mean on its socket: which generation
ids are running (``duplicate_id``; ``not_found`` versus a cancel that raced with the end),
how many may run at once (``rate_limited``), the socket-level pause versus one
generation's, the socket's own conversation for seed 002's ``content`` frames, and the
order of an attach (the log's replay first, live events queued meanwhile, then live).

It is fed parsed frames (:meth:`V1Session.receive` parses with :func:`frames.parse_frame`)
and returns *actions* for the I/O layer (server.ws) to carry out; it is told of their
outcomes (:meth:`~V1Session.started`, :meth:`~V1Session.attached`, :meth:`~V1Session.failed`,
:meth:`~V1Session.ended`). What the I/O layer keeps per generation (its run and subscriber)
is an opaque *handle* here.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from . import frames as fr
from .errors import GatewayError

__all__ = [
    "Action",
    "Attach",
    "Cancel",
    "Replay",
    "SendError",
    "SendPong",
    "SetPause",
    "StartChat",
    "V1Session",
]

H = TypeVar("H")  #: the I/O layer's handle of a running generation

_PONG = b'{"type":"pong"}'


@dataclass(slots=True, frozen=True)
class StartChat:
    """Admit and start ``chat``; then call :meth:`V1Session.started` (or :meth:`~V1Session.failed`)."""

    chat: fr.Chat
    conversation_id: str | None  #: the client's, or the socket's own for a ``content`` frame
    resumable: bool


@dataclass(slots=True, frozen=True)
class Attach:
    """Find the stream and replay it; then :meth:`V1Session.attached` (live) or :meth:`~V1Session.failed`."""

    req: fr.Attach


@dataclass(slots=True, frozen=True)
class Cancel:
    id: str
    handle: Any
    reason: str = "cancelled"


@dataclass(slots=True, frozen=True)
class SetPause:
    """Pause or resume one generation: ``by_socket`` is the socket-wide pause, else its own."""

    id: str
    handle: Any
    paused: bool
    by_socket: bool


@dataclass(slots=True, frozen=True)
class SendPong:
    data: Any = None

    @property
    def payload(self) -> bytes:
        return _PONG if self.data is None else orjson.dumps({"type": "pong", "data": self.data})


@dataclass(slots=True, frozen=True)
class SendError:
    err: GatewayError
    id: str | None = None
    #: the refusal counts against this limit in the metrics (``generations_per_socket``)
    limit: str | None = None

    @property
    def payload(self) -> bytes:
        return orjson.dumps(self.err.to_event(self.id))


Action = StartChat | Attach | Cancel | SetPause | SendPong | SendError


class Replay:
    """An attach's order: the log first, live events that arrive meanwhile after it, each exactly once.

    The subscriber :meth:`append`\\ s live events while the I/O layer writes what
    :meth:`take` gives it, until :meth:`take` gives nothing: from then on the subscriber
    writes live events itself (the I/O layer drops the replay in the same step).
    """

    __slots__ = ("done", "queued")

    def __init__(self, log: list[bytes]) -> None:
        self.queued = list(log)
        self.done = False

    def append(self, rest: bytes) -> None:
        if self.done:
            raise RuntimeError("the replay is over: live events are written directly")
        self.queued.append(rest)

    def take(self) -> list[bytes]:
        """The next batch to write, oldest first; empty once everything is out (the replay is then over)."""
        batch, self.queued = self.queued, []
        if not batch:
            self.done = True
        return batch


class V1Session(Generic[H]):
    """One socket's protocol v1 state (see the module docstring)."""

    def __init__(self, limits: fr.Limits, max_generations: int, remember_ended: int = 256) -> None:
        self.limits = limits
        self.max_generations = max_generations
        self.runs: dict[str, H] = {}  #: generation id -> handle, while it runs
        self._starting: set[str] = set()  #: ids between StartChat/Attach and their outcome
        #: ids that ended lately: a cancel or pause for one of them raced with its end (not an error)
        self.ended_ids: deque[str] = deque(maxlen=remember_ended)
        self.paused = False  #: the socket-wide pause (frames without an id)
        self.next_id = 0  #: names generations of dialects that send no id ("g0", "g1", …)
        self.conversation_id: str | None = None  #: the socket's own, for "content" frames

    # -- frames in, actions out ------------------------------------------------------
    def receive(self, text: str | bytes) -> list[Action]:
        """A text frame from the client."""
        try:
            req = fr.parse_frame(text, self.limits, self.next_id)
        except GatewayError as err:
            return [SendError(err, err.extra.pop("id", None))]
        return self.feed(req)

    def binary(self) -> list[Action]:
        """A binary frame from the client."""
        err = GatewayError("unsupported_frame", "binary frames are not supported; send JSON in text frames")
        return [SendError(err)]

    def feed(self, req: fr.Request) -> list[Action]:
        """A parsed frame."""
        if isinstance(req, fr.Chat):
            self.next_id += 1
            return self._chat(req)
        if isinstance(req, fr.Ping):
            return [SendPong(req.data)]
        if isinstance(req, fr.Cancel):
            return self._cancel(req.id)
        if isinstance(req, fr.Pause | fr.Resume):
            return self._pause(req.id, isinstance(req, fr.Pause))
        if isinstance(req, fr.Attach):
            self.next_id += 1
            return self._attach(req)
        raise TypeError(f"not a frame: {req!r}")

    def _chat(self, chat: fr.Chat) -> list[Action]:
        if chat.id in self.runs or chat.id in self._starting:
            err = GatewayError("duplicate_id", f'generation "{chat.id}" is still running on this socket; use a new id')
            return [SendError(err, chat.id)]
        limit = self.max_generations
        if len(self.runs) + len(self._starting) >= limit:
            err = GatewayError(
                "rate_limited",
                f"{limit} generations are already running on this socket",
                retryable=True,
                extra={"retry_after": 1},
            )
            return [SendError(err, chat.id, limit="generations_per_socket")]
        conversation_id = chat.conversation_id
        if conversation_id is None and chat.content is not None:
            if self.conversation_id is None:
                self.conversation_id = "c_" + uuid.uuid4().hex
            conversation_id = self.conversation_id
        self._starting.add(chat.id)
        return [StartChat(chat, conversation_id, chat.dialect == "v1" and bool(chat.stream_id))]

    def _attach(self, req: fr.Attach) -> list[Action]:
        if req.id in self.runs or req.id in self._starting:
            err = GatewayError("duplicate_id", f'generation "{req.id}" is already attached')
            return [SendError(err, req.id)]
        self._starting.add(req.id)
        return [Attach(req)]

    def _cancel(self, id: str) -> list[Action]:
        if id in self.runs:
            return [Cancel(id, self.runs[id])]
        if id in self.ended_ids:
            return []  # raced with its end: nothing to do
        return [self._not_found(id)]

    def _pause(self, id: str | None, paused: bool) -> list[Action]:
        if id is None:
            self.paused = paused
            return [SetPause(gid, handle, paused, by_socket=True) for gid, handle in self.runs.items()]
        if id in self.runs:
            return [SetPause(id, self.runs[id], paused, by_socket=False)]
        if id in self.ended_ids:
            return []
        return [self._not_found(id)]

    @staticmethod
    def _not_found(id: str) -> SendError:
        return SendError(GatewayError("not_found", f'no generation "{id}" on this socket'), id)

    # -- outcomes -------------------------------------------------------------------
    def started(self, id: str, handle: H) -> list[Action]:
        """A StartChat's generation runs: it is followed, and the socket-wide pause applies to it."""
        self._starting.discard(id)
        self.runs[id] = handle
        return [SetPause(id, handle, True, by_socket=True)] if self.paused else []

    def attached(self, id: str, handle: H, log: list[bytes]) -> tuple[Replay, list[Action]]:
        """An Attach found a live generation: its ``log`` is replayed before any live event."""
        actions = self.started(id, handle)
        return Replay(log), actions

    def failed(self, id: str) -> None:
        """A StartChat or Attach did not leave a generation running on this socket (an error, or an ended stream)."""
        self._starting.discard(id)

    def ended(self, id: str, handle: H) -> bool:
        """A generation ended (or was detached); False if ``id`` is another, later generation by now."""
        if self.runs.get(id) is not handle:
            return False
        del self.runs[id]
        self.ended_ids.append(id)
        return True

    def cut(self, reason: str) -> list[Cancel]:
        """Cancel every generation on the socket (the client stopped reading)."""
        return [Cancel(id, handle, reason) for id, handle in self.runs.items()]

    def busy(self) -> bool:
        return bool(self.runs)

    def clear(self) -> list[H]:
        """The socket is gone: every handle, forgotten."""
        handles = list(self.runs.values())
        self.runs.clear()
        return handles
