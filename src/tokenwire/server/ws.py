"""Every client WebSocket: one :class:`Session` per socket, many generations per session.

``/ws/chat`` speaks protocol v1 (and the AI SDK's frames, told apart per frame); another
endpoint's socket (``GET /v1/responses``) is the same session with a :class:`SocketDialect`
that reads its frames, so liveness, backpressure, the cut-off, the drain and the gauges are
one implementation for all of them.

This is the I/O layer only: it reads frames from aiohttp, feeds them to the protocol v1
machine (protocol.session.V1Session), carries out the actions it returns (starting
generations through the gateway, writing through the socket's WSConnection), and tells
the machine how they went. Everything written to the socket goes through
``Session.conn`` (server.connection).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from ..dialects.openai_chat import ChunkEncoder
from ..protocol import frames as fr
from ..protocol import session as v1
from ..protocol.errors import GatewayError
from ..protocol.events import CLOSE_DRAIN, CLOSE_IDLE, SUBPROTOCOL
from ..protocol.stream import id_prefix
from ..runtime.relay import Run
from . import aisdk_ws
from .connection import WSConnection
from .errors import error_response

if TYPE_CHECKING:
    from ..runtime.gateway import Gateway

__all__ = [
    "CLOSE_DRAIN",
    "CLOSE_IDLE",
    "SUBPROTOCOL",
    "Session",
    "SocketDialect",
    "new_socket",
    "serve_socket",
    "websocket_handler",
]

log = logging.getLogger("tokenwire.ws")

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
PING = WSMsgType.PING
PONG = WSMsgType.PONG


class SocketSubscriber:
    """Delivers protocol v1 frames (also what seed 002's page reads)."""

    __slots__ = ("pending", "prefix", "writer")

    def __init__(self, writer: WSConnection, id: str) -> None:
        self.writer = writer
        self.prefix = id_prefix(id)
        #: while an attach replays the log, live events wait here (protocol.session.Replay)
        self.pending: v1.Replay | None = None

    def send(self, rest: bytes, kind: int, value: Any) -> Awaitable[None] | None:
        if self.pending is not None:
            self.pending.append(rest)
            return None
        return self.writer.write(self.prefix + rest)


class OpenAISocketSubscriber:
    """Delivers ``chat.completion.chunk`` objects, as seed 000's client expects."""

    __slots__ = ("encode", "writer")

    def __init__(self, writer: WSConnection, stream_id: str, model: str) -> None:
        self.writer = writer  # the relay corks it for bursts
        self.encode = ChunkEncoder(stream_id, model).encode

    def send(self, rest: bytes, kind: int, value: Any) -> Awaitable[None] | None:
        data = self.encode(rest, kind, value)
        return None if data is None else self.writer.write(data)


Handle = tuple[Run, Any]  #: what the machine holds for each generation: its run and this socket's subscriber

_V1_SUBSCRIBERS = (SocketSubscriber, OpenAISocketSubscriber)


class SocketDialect(Protocol):
    """A client dialect that takes every text frame of its sockets (the Responses API's WebSocket mode).

    The session still owns the socket: reading, liveness, the frame gate, backpressure and the
    slow-consumer cut-off, the drain and the gauges. The dialect turns frames into runs
    (:meth:`Session.hold` keeps them on the socket) and errors into its own frames.
    """

    async def handle(self, session: Session, text: str) -> None: ...

    def error_frame(self, err: GatewayError) -> bytes:
        """An error in the dialect's own shape (bad frame, a refused limit, a binary frame)."""
        ...


class Session:
    """One client socket: reads its frames, carries out what the v1 machine (or its :class:`SocketDialect`) decides."""

    def __init__(
        self,
        gw: Gateway,
        ws: web.WebSocketResponse,
        principal: Any = None,
        transport: asyncio.Transport | None = None,
        dialect: SocketDialect | None = None,
    ) -> None:
        self.gw = gw
        #: None: protocol v1 (and the AI SDK's frames, told apart per frame); else it takes every frame
        self.dialect = dialect
        self._holds: set[asyncio.Task[None]] = set()  #: the waits for runs' ends (_on_end)
        self.ws = ws  #: read from only; every write goes through ``conn``
        self.last_seen = self.last_frame = time.monotonic()
        self.pinged = False
        self.closing = False
        self._closer: asyncio.Task[None] | None = None
        self.principal = principal
        settings = gw.settings
        self.v1: v1.V1Session[Handle] = v1.V1Session(gw.limits, settings.max_generations_per_socket)
        self.conn = WSConnection(
            ws, transport, slow_consumer_timeout=settings.slow_consumer_timeout, on_slow_consumer=self._slow_consumer
        )

    @property
    def runs(self) -> dict[str, Handle]:
        """Generation id -> (run, subscriber), while it runs on this socket."""
        return self.v1.runs

    def _slow_consumer(self) -> None:
        """The client stopped reading: cut its generations (others' sockets are not touched).

        Each one is really cancelled (``Run.cancel``); its ``end`` then says ``slow_consumer``,
        after the error frame written here.
        """
        self.gw.metrics.slow_consumer_cutoffs += 1
        cut = self.v1.cut("slow_consumer")
        log.info("cutting %d generation(s): client not reading (slow_consumer)", len(cut))
        stall = self.gw.settings.slow_consumer_timeout
        for action in cut:
            run, sub = action.handle
            if not run.cancel(action.reason):
                continue  # finishing already: its end is on its way
            err = GatewayError(
                "slow_consumer",
                f"the client read nothing for {stall:g} s while its send buffer was full; generation cancelled",
            )
            if isinstance(sub, _V1_SUBSCRIBERS):
                frames = [orjson.dumps(err.to_event(action.id))]
            else:  # another dialect's run (AI SDK, Responses): the error in its own shape, as an SSE cut writes it
                frames = sub.cut_frames(err)
            try:
                for frame in frames:
                    self.conn.post(frame)
            except (ConnectionError, RuntimeError):
                pass

    async def send_error(
        self, err: GatewayError, id: str | None = None, limit: str | None = None, frame_text: str | None = None
    ) -> None:
        """An error frame in the socket's dialect; ``frame_text``: the client frame it answers, if any."""
        if limit is not None:
            self.gw.metrics.reject(limit)
        self.gw.metrics.client_error(err.code)
        if self.dialect is not None:
            frame = self.dialect.error_frame(err)
        elif aisdk_ws.speaks(self, frame_text):  # its transport fails the whole socket on a v1 error frame
            frame = aisdk_ws.error_reply(err, frame_text)
        else:
            frame = orjson.dumps(err.to_event(id))
        try:
            await self.conn.send(frame)
        except (ConnectionError, RuntimeError):
            pass

    # -- liveness (driven by server.liveness.Liveness, one task for every socket) --
    def busy(self) -> bool:
        return self.v1.busy()

    def ping(self) -> None:
        self.conn.ping()

    def drop(self) -> None:
        log.info("dropping a socket silent for two ping intervals")
        self.conn.drop()

    def close_idle(self) -> None:
        if not self.closing:
            self.closing = True
            # kept on the session: the loop holds tasks only weakly
            self._closer = asyncio.get_running_loop().create_task(self._close_idle(time.monotonic()))

    async def _close_idle(self, decided: float) -> None:
        await asyncio.sleep(0)  # a frame read in the same loop pass as the sweep wins
        if self.v1.busy() or self.last_frame > decided - self.gw.settings.idle_timeout:
            self.closing = False
            return
        await self.conn.close(CLOSE_IDLE, b"idle timeout")

    async def close(self, code: int, message: bytes = b"") -> None:
        """The close handshake (a drain's 4001): nothing is written after it."""
        await self.conn.close(code, message)

    # -- reading --------------------------------------------------------------
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
                            text = msg.data if mtype is TEXT else None
                            await self.send_error(refused, refused.extra.pop("id", None), frame_text=text)
                            continue
                if mtype is TEXT:
                    await self.handle(msg.data)
                elif mtype is PING:
                    wait = self.conn.pong(msg.data)
                    if wait is not None:
                        await wait
                elif mtype is PONG:
                    continue
                elif mtype is BINARY:
                    await self.execute(self.v1.binary())
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
        for run, sub in self.v1.clear():
            run.unsubscribe(sub)

    def hold(self, key: str, run: Run, sub: Any) -> None:
        """Keep a dialect's run (AI SDK, Responses) on this socket until it ends.

        ``sub`` is its subscriber, with a ``cut_frames(err)`` giving the frames that tell the
        client why its request was cut (the slow consumer), in the dialect's own shape.

        While held it makes the socket busy (no idle close), it is cut with the socket's
        generations when the client stops reading, waited for by a drain, and detached
        (cancelled, if not resumable) when the socket goes.
        """
        runs = self.runs
        runs[key] = (run, sub)

        def forget() -> None:
            if runs.get(key, (None,))[0] is run:
                del runs[key]

        self._on_end(run, forget)

    async def handle(self, text: str) -> None:
        if self.dialect is not None:
            return await self.dialect.handle(self, text)
        # --- the AI SDK's WebSocketChatTransport (server/aisdk_ws.py): told by its frames' "requestId" ---
        aisdk = aisdk_ws.claim(self, text)
        if aisdk is not None:
            return await aisdk.handle(text)
        # --- end of the AI SDK hook ---
        try:
            await self.execute(self.v1.receive(text))
        except GatewayError as err:
            await self.send_error(err, err.extra.pop("id", None))
        except (ConnectionError, RuntimeError):
            raise
        except Exception as exc:
            log.exception("frame handling failed")
            await self.send_error(GatewayError("internal_error", f"internal error ({type(exc).__name__})"))

    # -- carrying out the machine's actions --------------------------------------
    async def execute(self, actions: list[v1.Action]) -> None:
        for action in actions:
            if isinstance(action, v1.StartChat):
                await self.start_chat(action)
            elif isinstance(action, v1.SendError):
                await self.send_error(action.err, action.id, action.limit)
            elif isinstance(action, v1.SendPong):
                await self.conn.send(action.payload)
            elif isinstance(action, v1.Cancel):
                action.handle[0].cancel(action.reason)
            elif isinstance(action, v1.SetPause):
                _set_pause(action)
            elif isinstance(action, v1.Attach):
                await self.attach(action.req)

    async def begin(self, chat: fr.Chat, conversation_id: str | None, resumable: bool) -> Run:
        """The one chat path: the gateway resolves, admits and starts the run."""
        return await self.gw.start_chat(self.principal, chat, conversation_id=conversation_id, resumable=resumable)

    async def start_chat(self, action: v1.StartChat) -> None:
        chat = action.chat
        try:
            run = await self.begin(chat, action.conversation_id, action.resumable)
        except BaseException:
            self.v1.failed(chat.id)
            raise
        sub: Any
        if chat.dialect == "openai":
            sub = OpenAISocketSubscriber(self.conn, run.gen.stream_id, run.route.model)
        else:
            sub = SocketSubscriber(self.conn, chat.id)
        handle = (run, sub)
        self._track(chat.id, handle, self.v1.started(chat.id, handle))

    def _track(self, id: str, handle: Handle, actions: list[v1.Action]) -> None:
        run, sub = handle
        run.subscribe(sub)
        for action in actions:  # the socket-wide pause
            if isinstance(action, v1.SetPause):
                _set_pause(action)

        def done() -> None:
            if self.v1.ended(id, handle):
                self.last_frame = time.monotonic()  # idle counts from the end of the last reply

        self._on_end(run, done)

    def _on_end(self, run: Run, done: Callable[[], None]) -> None:
        """Call ``done`` once ``run`` has ended (one small task; kept here, the loop holds tasks only weakly)."""

        async def wait() -> None:
            await run.ended.wait()
            done()

        task = asyncio.get_running_loop().create_task(wait())
        self._holds.add(task)
        task.add_done_callback(self._holds.discard)

    async def attach(self, req: fr.Attach) -> None:
        try:
            run, log_ = await self._find(req)
        except BaseException:
            self.v1.failed(req.id)
            raise
        sub = SocketSubscriber(self.conn, req.id)
        self.gw.registry.stats["resumes"] += 1
        if run.gen.ended:
            self.v1.failed(req.id)  # nothing runs on this socket: the log is all there is
            await self._write_all(sub.prefix, log_)
            return
        handle = (run, sub)
        replay, actions = self.v1.attached(req.id, handle, log_)
        sub.pending = replay  # live events wait behind the log
        self._track(req.id, handle, actions)
        while batch := replay.take():
            await self._write_all(sub.prefix, batch)
        sub.pending = None  # in the same step as the empty take(): live from here

    async def _find(self, req: fr.Attach) -> tuple[Run, list[bytes]]:
        """The stream to attach to, if this client may, and its events after ``last_seq``."""
        run = await self.gw.find_stream(self.principal, req)
        try:
            return run, run.gen.after(req.last_seq)
        except GatewayError as err:
            err.extra["id"] = req.id
            raise

    async def _write_all(self, prefix: bytes, rests: list[bytes]) -> None:
        write = self.conn.write
        for rest in rests:
            wait = write(prefix + rest)
            if wait is not None:
                await wait


def _set_pause(action: v1.SetPause) -> None:
    run = action.handle[0]
    if action.by_socket:
        run.set_paused(by_socket=action.paused)
    else:
        run.set_paused(self_=action.paused)


def new_socket(gw: Gateway, protocols: tuple[str, ...] = ()) -> web.WebSocketResponse:
    """A server socket as every endpoint's :class:`Session` needs it (not yet prepared)."""
    ws = web.WebSocketResponse(
        protocols=protocols,
        compress=False,  # frames are written whole by WSConnection's fast path
        autoping=False,  # pings, pongs and dead peers: Session.serve and server.liveness
        max_msg_size=max(4 * gw.settings.max_frame_bytes, 4 * 1024 * 1024),
    )
    if gw.worker is not None:  # which of `serve --workers` processes took the socket (debugging, tests)
        ws.headers["X-Tokenwire-Worker"] = str(gw.worker[0])
    return ws


async def serve_socket(
    gw: Gateway, request: web.Request, ws: web.WebSocketResponse, principal: Any, dialect: SocketDialect | None = None
) -> web.WebSocketResponse:
    """Prepare ``ws`` and serve it as one session, counted and watched with every other socket."""
    await ws.prepare(request)
    session = Session(gw, ws, principal, request.transport, dialect)  # type: ignore[arg-type]
    gw.sessions.add(session)
    gw.metrics.ws_connections += 1
    try:
        await session.serve()
    finally:
        gw.sessions.discard(session)
        await session.conn.close(WSCloseCode.OK)
    return ws


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.access.authenticate_ws(request)
    except GatewayError as err:
        return error_response(err)
    if gw.draining:
        raise web.HTTPServiceUnavailable(text="shutting down: reconnect to another instance")
    return await serve_socket(gw, request, new_socket(gw, (SUBPROTOCOL,)), principal)
