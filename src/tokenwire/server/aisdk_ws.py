"""The AI SDK's ``WebSocketChatTransport`` on ``/ws/chat`` (frames: :mod:`tokenwire.dialects.aisdk_ws`).

The socket endpoint (``server.ws``) hands a frame here when :func:`claim` recognises it as
the AI SDK's (a ``send``/``resume``/``abort`` with a ``requestId``); from then on every
frame of that socket comes here. Each ``send`` starts a resumable run (the chat id is
recorded as over HTTP, see ``server.aisdk_http.ChatStreams``, so a ``resume`` finds it on
any instance); many requests share one socket, each with its own ``requestId``.
``abort`` cancels the run upstream. ``resume`` replays the chat's reply from its start
(or after ``lastSequence``) exactly once and follows it live; ``no-active`` if none.

The socket's liveness, pings and close stay with ``server.ws``'s session: this module
only adds its runs to the session's ``runs`` (so it counts as busy and a disconnect
detaches them) and writes through its ``writer``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from ..dialects import aisdk_ws as proto
from ..protocol.errors import GatewayError
from ..protocol.events import ERROR, TOKEN
from .aisdk_http import chat_streams, new_message_id

if TYPE_CHECKING:
    from ..runtime.gateway import Gateway

__all__ = ["AISDKSocket", "claim", "error_reply", "speaks"]

log = logging.getLogger("tokenwire.aisdk")

_KEY = "aisdk:"  #: the prefix of this dialect's entries in the session's ``runs``


def claim(session: Any, text: str) -> AISDKSocket | None:
    """The session's AI SDK handler if ``text`` is (or the socket already speaks) that dialect."""
    handler = getattr(session, "aisdk", None)
    if handler is None:
        if not proto.is_aisdk_frame(text):
            return None
        handler = session.aisdk = AISDKSocket(session.gw, session.principal, session.conn, session.runs, session.hold)
    return handler


def speaks(session: Any, text: str | None = None) -> bool:
    """Whether the session's socket speaks the AI SDK's protocol (so far, or by ``text``, a frame of it)."""
    return getattr(session, "aisdk", None) is not None or (text is not None and proto.is_aisdk_frame(text))


def error_reply(err: GatewayError, text: str | None = None) -> bytes:
    """An ``error`` frame the AI SDK's transport accepts: always with a string ``requestId``.

    The transport throws on a frame without one, which fails every request on the socket; a
    ``requestId`` it does not know it ignores. The id is the error's, or that of the frame
    it answers (a frame the rate gate dropped), else empty.
    """
    rid = err.extra.get("requestId")
    if not isinstance(rid, str) and text is not None:
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            obj = None
        rid = obj.get("requestId") if type(obj) is dict else None
    return proto.reply("error", rid if isinstance(rid, str) else "", err)


class ChunkSubscriber:
    """A run's events as one request's ``chunk`` frames."""

    __slots__ = ("framer", "pending", "writer")

    def __init__(self, writer: Any, framer: proto.ChunkFramer) -> None:
        self.writer = writer  # the relay corks it for bursts
        self.framer = framer
        #: while a resume replays the log, live events wait here
        self.pending: list[tuple[bytes, int, Any]] | None = None

    def send(self, rest: bytes, kind: int, value: Any) -> Awaitable[None] | None:
        if self.pending is not None:
            self.pending.append((rest, kind, value))
            return None
        if kind == TOKEN and value is not None:  # the hot path: one frame, no list
            frame = self.framer.token(value)
            if frame is not None:
                return self.writer.write(frame) if frame else None
        wait = None
        for frame in self.framer.encode(rest, kind, value):
            w = self.writer.write(frame)
            if w is not None:
                wait = w
        return wait

    def cut_frames(self, err: GatewayError) -> list[bytes]:
        """The request's last frames when the socket cuts it (its error chunk and ``end``).

        The cancelled run's own end follows, and waits in ``pending`` for good: the request
        is over for the client, and a frame after its ``end`` would break the transport.
        """
        self.pending = []
        return self.framer.encode(b"", ERROR, err)


class AISDKSocket:
    def __init__(
        self, gw: Gateway, principal: Any, writer: Any, runs: dict[str, Any], hold: Callable[[str, Any, Any], None]
    ) -> None:
        self.gw = gw
        self.principal = principal
        self.writer = writer
        self.runs = runs
        self._hold = hold  #: the session's: keeps a run on the socket until it ends (Session.hold)

    async def _write(self, frame: bytes) -> None:
        wait = self.writer.write(frame)
        if wait is not None:
            await wait

    async def handle(self, text: str) -> None:
        try:
            req = proto.parse_frame(text, self.gw.limits)
            if isinstance(req, proto.Send):
                await self.send(req)
            elif isinstance(req, proto.Resume):
                await self.resume(req)
            else:
                self.abort(req.request_id)
        except GatewayError as err:
            self.gw.metrics.client_error(err.code)
            await self._write(proto.reply("error", str(err.extra.get("requestId", "")), err))
        except (ConnectionError, RuntimeError):
            raise
        except Exception as exc:
            log.exception("AI SDK frame handling failed")
            await self._write(proto.reply("error", "", GatewayError("internal_error", type(exc).__name__)))

    async def send(self, req: proto.Send) -> None:
        rid = req.request_id
        if _KEY + rid in self.runs:
            raise GatewayError("duplicate_id", f"request {rid} is still running", extra={"requestId": rid})
        chat = req.chat
        chat.stream_id = "s_" + uuid.uuid4().hex
        try:
            run = await self.gw.start_chat(self.principal, chat, resumable=True)
        except GatewayError as err:
            err.extra["requestId"] = rid
            raise
        message_id = req.request.message_id or new_message_id()
        sub = ChunkSubscriber(self.writer, proto.ChunkFramer(rid, message_id))
        self.writer.write(proto.reply("start", rid))
        run.subscribe(sub)  # before any await: the run's first events must reach it
        self._hold(_KEY + rid, run, sub)
        await chat_streams(self.gw).record(self.principal, req.request.chat_id, run, message_id)

    async def resume(self, req: proto.Resume) -> None:
        rid = req.request_id
        found = await chat_streams(self.gw).find(self.principal, req.chat_id)
        replay: list[bytes] = []
        if found is not None:
            try:
                replay = found[0].gen.after(-1)
            except GatewayError:
                found = None
        if found is None:
            await self._write(proto.reply("no-active", rid))
            return
        run, message_id = found
        self.gw.registry.stats["resumes"] += 1
        skip = -1 if req.last_sequence is None else req.last_sequence
        framer = proto.ChunkFramer(rid, message_id, skip)
        sub = ChunkSubscriber(self.writer, framer)
        live = not run.gen.ended
        self.writer.write(proto.reply("start", rid))
        if live:
            sub.pending = []
            run.subscribe(sub)  # in the same step as the replay was taken: no gap, no repeat
            self._hold(_KEY + rid, run, sub)
        for rest in replay:
            for frame in framer.encode(rest, 0, None):
                await self._write(frame)
        if live:
            while sub.pending:
                batch, sub.pending = sub.pending, []
                for rest, kind, value in batch:
                    for frame in framer.encode(rest, kind, value):
                        await self._write(frame)
            sub.pending = None
        else:
            for frame in framer.finish():
                await self._write(frame)

    def abort(self, rid: str) -> None:
        entry = self.runs.get(_KEY + rid)
        if entry is None:
            return  # raced with its end, or never started: nothing to stop
        entry[0].cancel("cancelled")
