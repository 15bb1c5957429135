"""The state of one generation, as plain code: sequence numbers, the replay log,
the answer text, pause and the end state (no I/O, no clock of its own).

Every event of a generation gets the next ``seq``: ``start`` is 0, then tokens
(and reasoning/tool-call events) 1, 2, 3 … with no gaps, and ``end`` last. Each
event is encoded once, *without* its socket-local ``id``, as the bytes that
follow ``{"id":"c1",`` in the frame; a socket prepends its own prefix. So the
log is independent of who watches, replays by concatenation, and can be shipped
to Redis unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import GatewayError
from .events import END, ERROR, REASONING, START, TOKEN, TOOL_CALL

__all__ = ["Generation", "StreamExpired", "decode_event", "id_prefix"]

_dumps = orjson.dumps

COMPLETED = "completed"
CANCELLED = "cancelled"
FAILED = "failed"


class StreamExpired(GatewayError):
    def __init__(self, stream_id: str, message: str) -> None:
        super().__init__("stream_expired", message, retryable=False, extra={"stream_id": stream_id})


def id_prefix(id: str) -> bytes:
    """The start of every frame sent for generation ``id`` on one socket."""
    return b'{"id":' + _dumps(id) + b","


_KINDS = {
    "token": (TOKEN, "content"),
    "reasoning": (REASONING, "content"),
    "tool_call": (TOOL_CALL, "delta"),
}


def decode_event(rest: bytes) -> tuple[int, Any]:
    """A logged event back into the ``(kind, value)`` a run hands its subscribers.

    For a replay that another dialect re-encodes, and for another instance's run followed
    through Redis (whose subscribers see what a local run's would: the text, the tool-call
    delta, a GatewayError, the start/end fields).
    """
    obj = orjson.loads(b"{" + rest)
    kind = obj.get("type")
    known = _KINDS.get(kind)
    if known is not None:
        return known[0], obj.get(known[1])
    if kind == "start":
        return START, obj
    if kind == "end":
        return END, obj
    if kind == "error":
        return ERROR, GatewayError.from_event(obj)
    return -1, obj


class Generation:
    """One generation's events and state.

    ``log[i]`` is the encoded event with ``seq == first_seq + i``; ``trim()``
    drops the oldest entries so memory stays bounded for very long replies,
    after which a resume from before ``first_seq`` is refused, never gapped.
    """

    __slots__ = (
        "ended",
        "first_seq",
        "log",
        "max_log",
        "seq",
        "status",
        "stream_id",
        "text",
        "token_count",
        "usage",
    )

    def __init__(self, stream_id: str, max_log: int = 1_000_000) -> None:
        self.stream_id = stream_id
        self.seq = -1
        self.first_seq = 0
        self.log: list[bytes] = []
        self.max_log = max_log
        self.text: list[str] = []
        self.token_count = 0
        self.status: str | None = None  #: read once ended by usage accounting (tokenwire.auth)
        self.usage: dict[str, Any] | None = None
        self.ended = False

    # -- events ---------------------------------------------------------
    def _append(self, rest: bytes) -> bytes:
        self.log.append(rest)
        if len(self.log) > self.max_log:
            self._trim()
        return rest

    def _trim(self) -> None:
        drop = len(self.log) - self.max_log
        del self.log[:drop]
        self.first_seq += drop

    def start(self, fields: dict[str, Any]) -> bytes:
        """The ``start`` event (seq 0)."""
        self.seq = 0
        body = {"type": "start", "seq": 0, "stream_id": self.stream_id, **fields}
        return self._append(_dumps(body)[1:])

    def token(self, content: str) -> bytes:
        """An answer token: the hot path, one string concatenation, no dict."""
        self.seq += 1
        self.text.append(content)
        self.token_count += 1
        rest = b'"type":"token","seq":%d,"content":%b}' % (self.seq, _dumps(content))
        log = self.log  # _append, inlined: once per token
        log.append(rest)
        if len(log) > self.max_log:
            self._trim()
        return rest

    def reasoning(self, content: str) -> bytes:
        self.seq += 1
        return self._append(b'"type":"reasoning","seq":%d,"content":%b}' % (self.seq, _dumps(content)))

    def tool_call(self, delta: dict[str, Any]) -> bytes:
        self.seq += 1
        return self._append(b'"type":"tool_call","seq":%d,"delta":%b}' % (self.seq, _dumps(delta)))

    def error(self, err: GatewayError) -> bytes:
        """An error belonging to this generation (logged, so a resumed client sees it)."""
        self.seq += 1
        body = err.to_event(None)
        del body["id"]
        body["seq"] = self.seq
        return self._append(_dumps(body)[1:])

    def end(self, status: str, fields: dict[str, Any]) -> bytes:
        """The ``end`` event; a generation ends once, whatever races to end it."""
        self.seq += 1
        self.status = status
        self.ended = True
        self.usage = fields.get("usage")  # read at the end by usage accounting (tokenwire.auth)
        body = {"type": "end", "seq": self.seq, "status": status, **fields}
        return self._append(_dumps(body)[1:])

    # -- replay ---------------------------------------------------------
    def after(self, last_seq: int) -> list[bytes]:
        """Events with ``seq > last_seq``, or :class:`StreamExpired` if some are gone."""
        if last_seq > self.seq:
            raise StreamExpired(
                self.stream_id,
                f"last_seq {last_seq} is ahead of stream {self.stream_id} (at {self.seq})",
            )
        start = last_seq + 1 - self.first_seq
        if start < 0:
            raise StreamExpired(
                self.stream_id,
                f"events {last_seq + 1}..{self.first_seq - 1} of stream {self.stream_id} "
                "are no longer kept; it cannot be resumed",
            )
        return self.log[start:]

    @property
    def answer(self) -> str:
        return "".join(self.text)
