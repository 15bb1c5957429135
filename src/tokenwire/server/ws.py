"""The WebSocket endpoint: one :class:`Session` per socket, many generations per session."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from ..dialects.openai_chat import ChunkEncoder
from ..protocol import frames as fr
from ..protocol.errors import GatewayError
from ..protocol.stream import id_prefix
from ..runtime.relay import Run
from . import aisdk_ws
from .errors import error_response
from .wsframe import FrameWriter

if TYPE_CHECKING:
    from ..runtime.gateway import Gateway

__all__ = ["CLOSE_DRAIN", "CLOSE_IDLE", "Session", "websocket_handler"]

log = logging.getLogger("tokenwire.ws")

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
PING = WSMsgType.PING
PONG = WSMsgType.PONG
CLOSE_IDLE = 4000  #: closed after idle_timeout with no application frame and no generation
CLOSE_DRAIN = 4001  #: the instance is restarting: reconnect (elsewhere) and resume
SUBPROTOCOL = "tokenwire.v1"
_PONG = b'{"type":"pong"}'


class SocketSubscriber:
    """Delivers protocol v1 frames (also what seed 002's page reads)."""

    __slots__ = ("pending", "prefix", "writer")

    def __init__(self, writer: FrameWriter, id: str) -> None:
        self.writer = writer
        self.prefix = id_prefix(id)
        #: while an attach replays the log, live events wait here
        self.pending: list[bytes] | None = None

    def send(self, rest: bytes, kind: int, value: Any) -> Awaitable[None] | None:
        if self.pending is not None:
            self.pending.append(rest)
            return None
        return self.writer.write(self.prefix + rest)


class OpenAISocketSubscriber:
    """Delivers ``chat.completion.chunk`` objects, as seed 000's client expects."""

    __slots__ = ("encode", "writer")

    def __init__(self, writer: FrameWriter, stream_id: str, model: str) -> None:
        self.writer = writer
        self.encode = ChunkEncoder(stream_id, model).encode

    def send(self, rest: bytes, kind: int, value: Any) -> Awaitable[None] | None:
        data = self.encode(rest, kind, value)
        return None if data is None else self.writer.write(data)


class Session:
    """One client socket: parses frames, starts and routes generations."""

    def __init__(
        self,
        gw: Gateway,
        ws: web.WebSocketResponse,
        principal: Any = None,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.gw = gw
        self.ws = ws
        self.transport = transport
        self.last_seen = self.last_frame = time.monotonic()
        self.pinged = False
        self.closing = False
        self._closer: asyncio.Task[None] | None = None
        self.principal = principal
        self.runs: dict[str, tuple[Run, Any]] = {}  # generation id -> (run, subscriber)
        self.ended_ids: deque[str] = deque(maxlen=256)
        self.paused = False
        self.next_id = 0
        self.conversation_id: str | None = None  # the socket's own, for "content" frames
        self.writer = FrameWriter(ws, gw.settings.slow_consumer_timeout, self._slow_consumer)

    def _slow_consumer(self) -> bool:
        """The client stopped reading: cut its generations (others' sockets are not touched).

        Returns True if the calling task is one of them (the writer then cancels it in place).
        """
        log.info("cutting %d generation(s): client not reading (slow_consumer)", len(self.runs))
        stall = self.gw.settings.slow_consumer_timeout
        current = asyncio.current_task()
        in_place = False
        for id, (run, _) in list(self.runs.items()):
            err = GatewayError(
                "slow_consumer",
                f"the client read nothing for {stall:g} s while its send buffer was full; generation cancelled",
            )
            try:
                self.writer.write(orjson.dumps(err.to_event(id)))
            except (ConnectionError, RuntimeError):
                pass
            if run.task is current and run.cancel_reason is None:
                run.cancel_reason = "slow_consumer"
                in_place = True
            else:
                run.cancel("slow_consumer")
        return in_place

    async def send_json(self, obj: dict[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_frame(orjson.dumps(obj), TEXT)

    async def send_error(self, err: GatewayError, id: str | None = None) -> None:
        self.gw.metrics.client_error(err.code)
        event = err.to_event(id)
        try:
            await self.send_json(event)
        except (ConnectionError, RuntimeError):
            pass

    # -- liveness (driven by server.liveness.Liveness, one task for every socket) --
    def busy(self) -> bool:
        return bool(self.runs)

    def ping(self) -> None:
        self.writer.ping()

    def drop(self) -> None:
        log.info("dropping a socket silent for two ping intervals")
        if self.transport is not None:
            self.transport.abort()

    def close_idle(self) -> None:
        if not self.closing:
            self.closing = True
            # kept on the session: the loop holds tasks only weakly
            self._closer = asyncio.get_running_loop().create_task(self._close_idle(time.monotonic()))

    async def _close_idle(self, decided: float) -> None:
        await asyncio.sleep(0)  # a frame read in the same loop pass as the sweep wins
        if self.runs or self.last_frame > decided - self.gw.settings.idle_timeout:
            self.closing = False
            return
        await self.ws.close(code=CLOSE_IDLE, message=b"idle timeout")

    async def serve(self) -> None:
        ws = self.ws
        gw = self.gw
        gate = gw.access.frame_gate()  # frames per second (None = no limit)
        clock = time.monotonic
        try:
            while True:
                msg = await ws.receive()
                mtype = msg.type
                self.last_seen = now = clock()
                self.pinged = False
                if mtype is TEXT or mtype is BINARY:
                    self.last_frame = now
                    if gate is not None:
                        refused = gate(msg.data)
                        if refused is not None:
                            await self.send_error(refused, refused.extra.pop("id", None))
                            continue
                if mtype is TEXT:
                    await self.handle(msg.data)
                elif mtype is PING:
                    await ws.pong(msg.data)
                elif mtype is PONG:
                    continue
                elif mtype is BINARY:
                    await self.send_error(
                        GatewayError(
                            "unsupported_frame",
                            "binary frames are not supported; send JSON in text frames",
                        )
                    )
                elif mtype in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    break
                elif mtype is WSMsgType.ERROR:
                    log.info("socket error: %s", ws.exception())
                    break
        except ConnectionError as exc:
            # the client vanished while we answered it (e.g. a reset during a ping flood): not our error
            log.debug("client gone: %s", exc)
        finally:
            self.detach_all()

    def detach_all(self) -> None:
        for run, sub in list(self.runs.values()):
            run.unsubscribe(sub)
        self.runs.clear()

    async def handle(self, text: str) -> None:
        # --- the AI SDK's WebSocketChatTransport (server/aisdk_ws.py): told by its frames' "requestId" ---
        aisdk = aisdk_ws.claim(self, text)
        if aisdk is not None:
            return await aisdk.handle(text)
        # --- end of the AI SDK hook ---
        gw = self.gw
        try:
            req = fr.parse_frame(text, gw.limits, self.next_id)
            if isinstance(req, fr.Chat):
                self.next_id += 1
                await self.chat(req)
            elif isinstance(req, fr.Ping):
                await self.ws.send_frame(
                    _PONG if req.data is None else orjson.dumps({"type": "pong", "data": req.data}),
                    TEXT,
                )
            elif isinstance(req, fr.Cancel):
                self.cancel(req.id)
            elif isinstance(req, fr.Pause | fr.Resume):
                self.pause(req.id, isinstance(req, fr.Pause))
            elif isinstance(req, fr.Attach):
                self.next_id += 1
                await self.attach(req)
        except GatewayError as err:
            await self.send_error(err, err.extra.pop("id", None))
        except (ConnectionError, RuntimeError):
            raise
        except Exception as exc:
            log.exception("frame handling failed")
            await self.send_error(GatewayError("internal_error", f"internal error ({type(exc).__name__})"))

    async def chat(self, chat: fr.Chat) -> None:
        gw = self.gw
        if chat.id in self.runs:
            raise GatewayError(
                "duplicate_id",
                f'generation "{chat.id}" is still running on this socket; use a new id',
                extra={"id": chat.id},
            )
        limit = gw.settings.max_generations_per_socket
        if len(self.runs) >= limit:
            gw.metrics.reject("generations_per_socket")
            raise GatewayError(
                "rate_limited",
                f"{limit} generations are already running on this socket",
                retryable=True,
                extra={"id": chat.id, "retry_after": 1},
            )
        conversation_id = chat.conversation_id
        if conversation_id is None and chat.content is not None:
            if self.conversation_id is None:
                self.conversation_id = "c_" + uuid.uuid4().hex
            conversation_id = self.conversation_id
        resumable = chat.dialect == "v1" and bool(chat.stream_id)
        run = await gw.start_chat(self.principal, chat, conversation_id=conversation_id, resumable=resumable)
        sub: Any
        if chat.dialect == "openai":
            sub = OpenAISocketSubscriber(self.writer, run.gen.stream_id, run.route.model)
        else:
            sub = SocketSubscriber(self.writer, chat.id)
        self._track(chat.id, run, sub)

    def _track(self, id: str, run: Run, sub: Any) -> None:
        run.subscribe(sub)
        self.runs[id] = (run, sub)
        if self.paused:
            run.set_paused(by_socket=True)

        def done(_: Any) -> None:
            entry = self.runs.get(id)
            if entry is not None and entry[0] is run:
                del self.runs[id]
                self.ended_ids.append(id)
                self.last_frame = time.monotonic()  # idle counts from the end of the last reply

        asyncio.get_running_loop().create_task(self._wait_end(run, done))

    @staticmethod
    async def _wait_end(run: Run, done: Any) -> None:
        await run.ended.wait()
        done(None)

    def cancel(self, id: str) -> None:
        entry = self.runs.get(id)
        if entry is None:
            if id in self.ended_ids:
                return  # raced with its end: nothing to do
            raise GatewayError("not_found", f'no generation "{id}" on this socket', extra={"id": id})
        entry[0].cancel("cancelled")

    def pause(self, id: str | None, paused: bool) -> None:
        if id is None:
            self.paused = paused
            for run, _ in self.runs.values():
                run.set_paused(by_socket=paused)
            return
        entry = self.runs.get(id)
        if entry is None:
            if id in self.ended_ids:
                return
            raise GatewayError("not_found", f'no generation "{id}" on this socket', extra={"id": id})
        entry[0].set_paused(self_=paused)

    async def attach(self, req: fr.Attach) -> None:
        gw = self.gw
        if req.id in self.runs:
            raise GatewayError("duplicate_id", f'generation "{req.id}" is already attached', extra={"id": req.id})
        run = await gw.find_stream(self.principal, req)
        try:
            replay = run.gen.after(req.last_seq)
        except GatewayError as err:
            err.extra["id"] = req.id
            raise
        sub = SocketSubscriber(self.writer, req.id)
        gw.registry.stats["resumes"] += 1
        if run.gen.ended:
            await self._write_all(sub.prefix, replay)
            return
        sub.pending = []
        self._track(req.id, run, sub)
        await self._write_all(sub.prefix, replay)
        while sub.pending:
            batch, sub.pending = sub.pending, []
            await self._write_all(sub.prefix, batch)
        sub.pending = None

    async def _write_all(self, prefix: bytes, rests: list[bytes]) -> None:
        write = self.writer.write
        for rest in rests:
            wait = write(prefix + rest)
            if wait is not None:
                await wait


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.access.authenticate_ws(request)
    except GatewayError as err:
        return error_response(err)
    if gw.draining:
        raise web.HTTPServiceUnavailable(text="shutting down: reconnect to another instance")
    ws = web.WebSocketResponse(
        protocols=(SUBPROTOCOL,),
        compress=False,
        autoping=False,  # pings, pongs and dead peers: Session.serve and server.liveness
        max_msg_size=max(4 * gw.settings.max_frame_bytes, 4 * 1024 * 1024),
    )
    if gw.worker is not None:  # which of `serve --workers` processes took the socket (debugging, tests)
        ws.headers["X-Tokenwire-Worker"] = str(gw.worker[0])
    await ws.prepare(request)
    session = Session(gw, ws, principal, request.transport)  # type: ignore[arg-type]
    gw.sessions.add(session)
    gw.metrics.ws_connections += 1
    try:
        await session.serve()
    finally:
        gw.sessions.discard(session)
        if not ws.closed:
            await ws.close(code=WSCloseCode.OK)
    return ws
