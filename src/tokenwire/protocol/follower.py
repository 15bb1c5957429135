"""The client's side of protocol v1, sans I/O: frames in, frames to send and things to do out.

:class:`V1Client` follows the generations multiplexed on one socket (docs/protocol.md). It
never touches a socket, a loop or a clock: the I/O layer (``tokenwire.client.core``) feeds it
every server frame with :meth:`V1Client.receive`, sends the frames it hands back, and acts on
the other actions (wake a consumer, fail a stream, stop reading). What it decides:

* **Exactly once, in order.** Each event's ``seq`` must be the last one plus one: a ``seq``
  already seen is dropped (a replay after ``attach`` may straddle ``last_seq``), a ``seq``
  further on is a gap, which fails the stream with ``stream_gap`` (never a silent hole).
* **Flow control.** Tokens, reasoning and tool-call deltas wait in the stream's buffer. At
  ``high_water`` buffered items the machine sends ``pause`` (once per crossing), and when the
  consumer has taken the buffer down to ``low_water`` it sends ``resume``. At ``max_buffer``
  (far above ``high_water``) it tells the I/O layer to stop reading the socket until room is made.
* **Re-attach.** After a reconnect, :meth:`V1Client.reattach_frames` gives an ``attach`` with
  the last ``seq`` of every generation in flight, restating its pause (the server keeps a
  generation's pause across sockets).
* **The end.** ``end`` and ``error`` finish a stream. ``not_found`` is ignored (a pause,
  resume or cancel that raced the end of its generation). ``stream_expired`` before ``start``
  means the chat never reached the server (the socket dropped first): the chat is sent again,
  once.

A stream's state lives in a :class:`StreamState` the I/O layer creates (and may subclass to
hang its wake-up handles on); :class:`V1Client` keeps the ones in flight by ``id``. Times are
passed in (``now``), so the machine is deterministic and unit-testable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .events import REASONING, TOKEN, TOOL_CALL

__all__ = [
    "Action",
    "Ended",
    "Failed",
    "Send",
    "Stall",
    "StrayError",
    "StreamState",
    "V1Client",
    "Wake",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Send this frame on the socket (a ``pause``, or a chat sent again)."""

    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Wake:
    """New items are in ``stream.items``: wake its consumer."""

    stream: StreamState


@dataclass(frozen=True, slots=True)
class Stall:
    """``stream``'s buffer reached ``max_buffer``: stop reading the socket until its consumer takes
    an item (unless it is closed meanwhile), so TCP holds the server back."""

    stream: StreamState


@dataclass(frozen=True, slots=True)
class Ended:
    """The generation ended (``stream.end`` holds the ``end`` event); no more events will come."""

    stream: StreamState


@dataclass(frozen=True, slots=True)
class Failed:
    """The generation failed; no more events will come. ``event`` is the server's ``error`` event,
    or ``None`` when the client itself found the problem (``code`` ``stream_gap``)."""

    stream: StreamState
    code: str
    message: str
    event: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class StrayError:
    """An ``error`` event not about a generation in flight (``id`` null or unknown)."""

    event: dict[str, Any]


Action = Send | Wake | Stall | Ended | Failed | StrayError


class StreamState:
    """Where one generation stands: what was received, what is buffered, what was sent about it.

    ``items`` holds ``(kind, value)`` pairs (``events.TOKEN`` / ``REASONING`` / ``TOOL_CALL``)
    waiting for the consumer, who takes them with :meth:`take` and then asks :meth:`consumed`
    whether a ``resume`` is due. Those two may run on another thread than :meth:`V1Client.receive`
    (the blocking client's): they only pop the deque and flip flags, as the GIL allows.
    """

    __slots__ = (
        "chat",
        "closed",
        "done",
        "end",
        "high_water",
        "id",
        "items",
        "last_seq",
        "low_water",
        "max_buffer",
        "max_buffered",
        "opened",
        "paused",
        "pauses",
        "resume_pending",
        "resumes",
        "retried_chat",
        "start",
        "stream_id",
        "t0",
        "t_first",
    )

    def __init__(self, id: str, chat: dict[str, Any], *, high_water: int, low_water: int, max_buffer: int) -> None:
        if not 0 <= low_water < high_water <= max_buffer:
            raise ValueError("need 0 <= low_water < high_water <= max_buffer")
        self.id = id
        self.chat = chat  #: the ``chat`` frame, sent on open (and once more after an early ``stream_expired``)
        self.stream_id: str = chat["stream_id"]
        self.high_water = high_water
        self.low_water = low_water
        self.max_buffer = max_buffer
        self.items: deque[tuple[int, Any]] = deque()
        self.last_seq = -1  #: the ``seq`` of the last event received (what ``attach`` resumes after)
        self.start: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None
        self.opened = False  #: the consumer asked for it (the chat is being or has been sent)
        self.done = False  #: no more events will come (end, error, cancelled or dropped)
        self.closed = False  #: the consumer is finished with it
        self.paused = False  #: we asked the server to pause it (and have not resumed it since)
        self.resume_pending = False  #: a ``resume`` is being sent
        self.pauses = 0
        self.resumes = 0
        self.max_buffered = 0
        self.retried_chat = False
        self.t0 = 0.0  #: ``now`` when the chat was sent
        self.t_first: float | None = None  #: ``now`` when the first token arrived

    # -- consumer side ------------------------------------------------------------------
    def take(self) -> tuple[int, Any] | None:
        """The next buffered item, or ``None`` if the buffer is empty."""
        items = self.items
        return items.popleft() if items else None

    def consumed(self) -> dict[str, Any] | None:
        """After :meth:`take`: the ``resume`` frame to send if the buffer is down to ``low_water``
        while paused. Report how sending it went with :meth:`resume_sent`."""
        if self.paused and not self.resume_pending and len(self.items) <= self.low_water:
            self.resume_pending = True
            return {"type": "resume", "id": self.id}
        return None

    def resume_sent(self, ok: bool) -> None:
        """The ``resume`` from :meth:`consumed` went out (``ok``) or could not be sent (the socket
        is down: :meth:`V1Client.reattach_frames` restates it on the next socket)."""
        if ok:
            self.paused = False
            self.resumes += 1
        self.resume_pending = False


class V1Client:
    """The generations in flight on one client socket, by ``id``, and the rules above."""

    def __init__(self) -> None:
        self.streams: dict[str, StreamState] = {}
        # (Wake(st),) per stream, made once and handed out again (actions are immutable): it is
        # the answer to almost every token, so the hot path allocates nothing for it
        self._woken: dict[str, tuple[Wake]] = {}

    # -- the consumer's requests ------------------------------------------------------------
    def begin(self, st: StreamState) -> None:
        """The consumer asked for ``st`` (before the socket is even connected)."""
        st.opened = True

    def open(self, st: StreamState, now: float) -> dict[str, Any]:
        """The socket is up: follow ``st`` from now on; returns its ``chat`` frame to send. If that
        send is lost, the reconnect's ``attach`` (then ``stream_expired`` → chat again) covers it."""
        st.opened = True
        self.streams[st.id] = st
        st.t0 = now
        return st.chat

    def open_failed(self, st: StreamState) -> None:
        """Connecting for ``st`` failed: it is over before it began."""
        st.done = st.closed = True

    def close(self, st: StreamState) -> dict[str, Any] | None:
        """The consumer is finished with ``st``: forget it, drop its buffer; returns the ``cancel``
        frame to send if the generation is still running, else ``None``."""
        if st.closed and st.done:
            return None
        st.closed = True
        if self.streams.get(st.id) is st:
            del self.streams[st.id]
            self._woken.pop(st.id, None)
        running = st.opened and not st.done
        st.done = True
        st.items.clear()
        return {"type": "cancel", "id": st.id} if running else None

    def cancel_frames(self) -> list[dict[str, Any]]:
        """A ``cancel`` for every generation still running (the client is closing)."""
        return [{"type": "cancel", "id": st.id} for st in self.streams.values() if st.opened and not st.done]

    def drop_all(self) -> list[StreamState]:
        """Forget every generation in flight (the client is closing, or the connection is lost for
        good); returns them, marked done, for the caller to fail."""
        streams = list(self.streams.values())
        self.streams.clear()
        self._woken.clear()
        for st in streams:
            st.done = True
        return streams

    # -- the socket --------------------------------------------------------------------------
    def reattach_frames(self) -> list[dict[str, Any]]:
        """A new socket is up: an ``attach`` per generation in flight, resuming after its last
        ``seq``, each followed by its flow-control state if it was ever paused (the server keeps a
        generation's pause across sockets): ``pause`` if its buffer is still above ``low_water``,
        else ``resume``."""
        frames: list[dict[str, Any]] = []
        for st in self.streams.values():
            frames.append({"type": "attach", "id": st.id, "stream_id": st.stream_id, "last_seq": st.last_seq})
            if st.pauses:
                if st.paused and len(st.items) <= st.low_water:
                    st.paused = False
                frames.append({"type": "pause" if st.paused else "resume", "id": st.id})
        return frames

    def receive(self, ev: Mapping[str, Any], now: float) -> tuple[Action, ...]:
        """One server frame (parsed JSON); returns what to do about it, in order."""
        typ = ev.get("type")
        st = self.streams.get(ev.get("id"))  # type: ignore[arg-type]
        if st is None:
            return (StrayError(dict(ev)),) if typ == "error" else ()
        seq = ev.get("seq")
        if seq is not None:
            if seq <= st.last_seq:
                return ()  # already delivered (replayed twice): exactly once
            if seq != st.last_seq + 1:
                self._forget(st)
                return (Failed(st, "stream_gap", f"events {st.last_seq + 1}..{seq - 1} are missing", None),)
            st.last_seq = seq
        if typ == "token":
            if st.t_first is None:
                st.t_first = now
            return self._buffer(st, (TOKEN, ev["content"]))
        if typ == "reasoning":
            return self._buffer(st, (REASONING, ev.get("content", "")))
        if typ == "tool_call":
            return self._buffer(st, (TOOL_CALL, ev.get("delta") or {}))
        if typ == "start":
            st.start = dict(ev)
            return ()
        if typ == "end":
            st.end = dict(ev)
            self._forget(st)
            return (Ended(st),)
        if typ == "error":
            code = ev.get("code")
            if code == "not_found":
                return ()  # a pause/resume/cancel that raced the end of its generation
            if code == "stream_expired" and st.start is None and not st.retried_chat:
                st.retried_chat = True  # the chat never reached the server: send it again
                return (Send(st.chat),)
            self._forget(st)
            return (Failed(st, str(code), str(ev.get("message") or code), dict(ev)),)
        return ()

    def _buffer(self, st: StreamState, item: tuple[int, Any]) -> tuple[Action, ...]:
        items = st.items
        items.append(item)
        n = len(items)
        if n > st.max_buffered:
            st.max_buffered = n
        if n < st.high_water:  # the hot path: nothing to send, nothing to hold back
            woken = self._woken.get(st.id)
            if woken is None or woken[0].stream is not st:
                woken = self._woken[st.id] = (Wake(st),)
            return woken
        out: list[Action] = [Wake(st)]
        if not st.paused:
            st.paused = True
            st.pauses += 1
            out.append(Send({"type": "pause", "id": st.id}))
        if n >= st.max_buffer and not st.closed:
            out.append(Stall(st))
        return tuple(out)

    def _forget(self, st: StreamState) -> None:
        del self.streams[st.id]
        self._woken.pop(st.id, None)
        st.done = True
