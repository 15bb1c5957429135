"""The AI SDK's ``WebSocketChatTransport`` protocol (``ai`` 7.x), as a pure machine.

Client frames (``WebSocketChatTransportRequest``):
``{"type":"send", requestId, id, trigger, messageId, messages, headers, body, metadata}``,
``{"type":"resume", requestId, id, lastSequence?, headers, body, metadata}`` and
``{"type":"abort", requestId}``. Server frames (``WebSocketChatTransportResponse``):
``start``, ``chunk {sequence, chunk}``, ``end``, ``error {errorText}``, ``no-active``,
each with the request's ``requestId``. Sequences count a request's chunks from 0 with no
gap (the transport refuses an out-of-order one and drops repeats); a replay for ``resume``
numbers the same chunks the same way, so ``lastSequence`` skips exactly what was seen.

:func:`is_aisdk_frame` tells these frames from protocol v1's (v1 has a ``resume`` too, but
never a ``requestId``). No I/O here: ``server.aisdk_ws`` owns the socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from ..protocol.errors import GatewayError
from ..protocol.events import END, ERROR, START, TOKEN
from ..protocol.frames import Chat, Limits
from .aisdk import AISDKRequest, UIChunks, error_text, from_v1, parse_request

__all__ = [
    "Abort",
    "ChunkFramer",
    "Resume",
    "Send",
    "is_aisdk_frame",
    "parse_frame",
    "reply",
]

_dumps = orjson.dumps
_TYPES = (b'"send"', b'"resume"', b'"abort"')
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


@dataclass(slots=True)
class Send:
    request_id: str
    chat: Chat
    request: AISDKRequest


@dataclass(slots=True)
class Resume:
    request_id: str
    chat_id: str
    last_sequence: int | None


@dataclass(slots=True)
class Abort:
    request_id: str


def is_aisdk_frame(text: str | bytes) -> bool:
    """Whether a client frame is the AI SDK's (cheap: a substring test, then a parse)."""
    if ('"requestId"' if isinstance(text, str) else b'"requestId"') not in text:  # type: ignore[operator]
        return False
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return type(obj) is dict and obj.get("type") in ("send", "resume", "abort") and "requestId" in obj


def parse_frame(text: str | bytes, limits: Limits) -> Send | Resume | Abort:
    """One client frame as a request; GatewayError (with ``requestId`` in ``extra``) if it is wrong."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > limits.max_frame_bytes:
        raise GatewayError("frame_too_large", f"frame of {size} bytes is over the {limits.max_frame_bytes}-byte limit")
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise GatewayError("invalid_json", f"frame is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise GatewayError("bad_request", "frame must be a JSON object")
    rid = obj.get("requestId")
    if not isinstance(rid, str) or not _REQUEST_ID.fullmatch(rid):
        raise GatewayError("bad_request", '"requestId" must be a string of 1-128 letters, digits or "_.:-"')
    kind = obj.get("type")
    try:
        if kind == "abort":
            return Abort(rid)
        if kind == "resume":
            seq = obj.get("lastSequence")
            if seq is not None and (type(seq) is not int or seq < 0):
                raise GatewayError("bad_request", '"lastSequence" must be an integer >= 0')
            chat_id = obj.get("id")
            if not isinstance(chat_id, str) or not chat_id:
                raise GatewayError("bad_request", '"id" (the chat id) must be a string')
            return Resume(rid, chat_id, seq)
        if kind == "send":
            body = obj.get("body")
            if body is not None and type(body) is not dict:
                raise GatewayError("bad_request", '"body" must be an object')
            fields = {**(body or {}), **{k: obj[k] for k in ("id", "messages", "trigger", "messageId") if k in obj}}
            chat, request = parse_request(fields, limits)
            return Send(rid, chat, request)
    except GatewayError as err:
        err.extra["requestId"] = rid
        raise
    raise GatewayError("unknown_type", 'frame "type" must be "send", "resume" or "abort"', extra={"requestId": rid})


def reply(kind: str, request_id: str, error: GatewayError | None = None) -> bytes:
    """A ``start`` / ``end`` / ``no-active`` / ``error`` server frame."""
    body: dict[str, Any] = {"type": kind, "requestId": request_id}
    if error is not None:
        body["errorText"] = error_text(error)
    return _dumps(body)


class ChunkFramer:
    """A run's events as ``chunk`` frames of one request (then ``end``).

    ``skip_through``: chunks with a sequence up to it are not sent (a ``resume`` with
    ``lastSequence``). :meth:`encode` returns one bytes object per frame.
    """

    __slots__ = ("done", "head", "request_id", "seq", "skip", "ui")

    def __init__(self, request_id: str, message_id: str, skip_through: int = -1) -> None:
        self.request_id = request_id
        self.ui = UIChunks(message_id)
        self.head = b'{"type":"chunk","requestId":' + _dumps(request_id) + b',"sequence":'
        self.seq = -1
        self.skip = skip_through
        self.done = False

    def _frame(self, chunk: bytes) -> bytes | None:
        self.seq += 1
        if self.seq <= self.skip:
            return None
        return self.head + b"%d" % self.seq + b',"chunk":' + chunk + b"}"

    def token(self, value: str) -> bytes | None:
        """The hot path: a token in an open text part as its one frame (None: not that case)."""
        head = self.ui.delta_head
        if head is None:
            return None
        self.seq = seq = self.seq + 1
        if seq <= self.skip:
            return b""
        return b'%b%d,"chunk":%b%b}}' % (self.head, seq, head, _dumps(value))

    def encode(self, rest: bytes, kind: int, value: Any) -> list[bytes]:
        if value is None:
            kind, value = from_v1(rest)
        if kind == TOKEN:
            frame = self.token(value)
            if frame is not None:
                return [frame] if frame else []
        elif kind == START:
            return []
        out = []
        for chunk in self.ui.chunks(kind, value):
            frame = self._frame(chunk)
            if frame is not None:
                out.append(frame)
        if kind == END or kind == ERROR:
            out.extend(self.finish())
        return out

    def finish(self) -> list[bytes]:
        """The ``end`` frame, once."""
        if self.done:
            return []
        self.done = True
        return [reply("end", self.request_id)]
