"""The Vercel AI SDK over HTTP: what ``DefaultChatTransport`` (``useChat``) talks to.

- ``POST /api/chat``: the SDK's body -> a resumable run -> the UI message stream (SSE with
  ``x-vercel-ai-ui-message-stream: v1``), see :mod:`tokenwire.dialects.aisdk`.
- ``GET /api/chat/{id}/stream``: the SDK's ``reconnectToStream`` (``useChat({resume: true})``):
  the chat's running or just-ended reply, replayed from its start and then followed live;
  204 when there is none. Works on any instance with Redis (``gw.find_stream``).
- ``POST /api/chat/{id}/stop``: cancel the chat's reply upstream (also on another instance).
  The SDK's own ``stop()`` only closes the client's connection, which a resumable reply
  outlives (that is the point of resume), so an app calls this to really stop.

:class:`ChatStreams` remembers which stream a chat id is answering, per API key (a chat
id of another key is "none"): in memory, and in Redis when ``redis_url`` is set so any
instance can find it; an entry lives ``resume_retention`` seconds after its reply ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from aiohttp import web

from ..dialects import aisdk
from ..protocol.errors import GatewayError
from ..protocol.frames import Attach
from .disconnects import DisconnectWatch
from .errors import error_headers
from .http_api import DISCONNECTS, KEEPALIVE, read_json_body
from .streaming import SSE_HEADERS, SSEResponder

if TYPE_CHECKING:
    from ..runtime.gateway import Gateway

__all__ = ["ChatStreams", "chat_post", "chat_stop", "chat_stream", "chat_streams"]

log = logging.getLogger("tokenwire.aisdk")

#: how long a running reply's chat entry lives in Redis beyond the retention (refreshed at its end)
_RUNNING_TTL = 3600
#: set the entry's expiry only if it still names this stream (a newer reply may have replaced it)
_EXPIRE_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end return 0"
_GONE = ("stream_expired", "forbidden", "not_found", "unknown_stream")


def error_response(err: GatewayError) -> web.Response:
    """A refusal as the AI SDK shows it: the status, and the message as plain text (code in a header)."""
    headers = error_headers(err)
    headers["X-Tokenwire-Error-Code"] = err.code
    return web.Response(
        body=aisdk.error_body(err), status=err.http_status, content_type="text/plain", charset="utf-8", headers=headers
    )


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


class ChatStreams:
    """chat id (per API key) -> the stream answering it, and the reply's message id."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.local: dict[str, tuple[str, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def key(principal: Any, chat_id: str) -> str:
        return f"{getattr(principal, 'key_id', None) or '-'}/{chat_id}"

    def _redis_key(self, key: str) -> str:
        return f"{self.gw.settings.redis_prefix}:aisdk:{key}"

    async def record(self, principal: Any, chat_id: str, run: Any, message_id: str) -> None:
        key = self.key(principal, chat_id)
        entry = (run.gen.stream_id, message_id)
        self.local[key] = entry
        value = orjson.dumps(entry)
        cluster = self.gw.cluster
        retention = max(1, int(self.gw.settings.resume_retention))
        if cluster is not None:
            link = cluster.link
            try:
                await link.call(
                    link.redis.set(self._redis_key(key), value, ex=retention + _RUNNING_TTL),
                    "recording a chat's stream",
                )
            except GatewayError as err:  # resume on another instance will not find it; this one will
                log.warning("%s", err.message)
        task = asyncio.get_running_loop().create_task(self._expire(key, entry, value, run, retention))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, key: str, entry: tuple[str, str], value: bytes, run: Any, retention: int) -> None:
        """Once the reply has ended, the entry lives ``resume_retention`` seconds more (as the run's log)."""
        await run.ended.wait()
        cluster = self.gw.cluster
        if cluster is not None:
            link = cluster.link
            with contextlib.suppress(GatewayError):
                await link.call(link.redis.eval(_EXPIRE_IF, 1, self._redis_key(key), value, retention), "expiring")

        def forget() -> None:
            if self.local.get(key) == entry:
                del self.local[key]

        asyncio.get_running_loop().call_later(retention, forget)

    async def lookup(self, principal: Any, chat_id: str) -> tuple[str, str] | None:
        key = self.key(principal, chat_id)
        entry = self.local.get(key)
        if entry is not None:
            return entry
        cluster = self.gw.cluster
        if cluster is None:
            return None
        link = cluster.link
        raw = await link.call(link.redis.get(self._redis_key(key)), "looking up a chat's stream")
        if raw is None:
            return None
        sid, mid = orjson.loads(raw)
        return sid, mid

    async def find(self, principal: Any, chat_id: str, *, resume: bool = True) -> tuple[Any, str] | None:
        """The chat's run (local, or a RemoteRun over Redis) and message id; None if there is none.

        ``resume`` as for :meth:`Gateway.find_stream`."""
        entry = await self.lookup(principal, chat_id)
        if entry is None:
            return None
        sid, mid = entry
        try:
            run = await self.gw.find_stream(principal, Attach("aisdk", sid, -1), resume=resume)
        except GatewayError as err:
            if err.code in _GONE:
                return None
            raise
        return run, mid


_streams: weakref.WeakKeyDictionary[Any, ChatStreams] = weakref.WeakKeyDictionary()


def chat_streams(gw: Gateway) -> ChatStreams:
    """The gateway's chat -> stream map (one per gateway; the WebSocket dialect shares it)."""
    streams = _streams.get(gw)
    if streams is None:
        streams = _streams[gw] = ChatStreams(gw)
    return streams


class UIStreamResponder(SSEResponder):
    """The UI message stream's SSE response; holds live events back while a replay is written."""

    __slots__ = ("gone", "pending")
    HEADERS: ClassVar[dict[str, str]] = {**SSE_HEADERS, **aisdk.HEADERS}

    def __init__(self, request: web.Request, encoder: aisdk.SSEEncoder) -> None:
        super().__init__(request, encoder)
        self.pending: list[tuple[bytes, int, Any]] | None = None
        self.gone = asyncio.Event()

    def send(self, rest: bytes, kind: int, value: Any) -> Awaitable[None] | None:
        if self.pending is not None:
            self.pending.append((rest, kind, value))
            return None
        return super().send(rest, kind, value)

    async def _write(self, data: bytes) -> None:
        try:
            await super()._write(data)
        except (ConnectionError, RuntimeError):
            self.gone.set()
            raise

    def _lost(self) -> None:
        self.gone.set()


async def _until_end(run: Any, sse: UIStreamResponder) -> None:
    """Wait for the run's end, or for the client to go (the run then goes on, resumable)."""
    if run.gen.ended and run.ended.is_set():
        return
    ended = asyncio.ensure_future(run.ended.wait())
    gone = asyncio.ensure_future(sse.gone.wait())
    try:
        await asyncio.wait((ended, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended.cancel()
        gone.cancel()


async def _supersede(gw: Gateway, principal: Any, chat_id: str) -> None:
    """A new message for a chat whose reply is still running stops that reply (here or on its instance).

    The chat's stream, resume and stop all name the newest reply only, so an older one left
    running could no longer be stopped or resumed, and would go on spending (``useChat``'s
    ``regenerate`` while a reply streams, or two tabs of one chat)."""
    found = await chat_streams(gw).find(principal, chat_id, resume=False)
    if found is not None and not found[0].gen.ended:
        found[0].cancel("superseded")


async def chat_post(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.access.authenticate_http(request)
        body = await read_json_body(request, gw.settings.max_frame_bytes)
        chat, req = aisdk.parse_request(body, gw.limits)
        chat.stream_id = "s_" + uuid.uuid4().hex
        await _supersede(gw, principal, req.chat_id)
        run = await gw.start_chat(principal, chat, resumable=True)
    except GatewayError as err:
        return error_response(err)
    message_id = req.message_id or new_message_id()
    encoder = aisdk.SSEEncoder(message_id)
    sse = UIStreamResponder(request, encoder)
    run.subscribe(sse)  # before any await: the run's first events must reach it
    watch: DisconnectWatch = request.app[DISCONNECTS]
    try:
        with watch.following(request, run, sse, KEEPALIVE):
            await chat_streams(gw).record(principal, req.chat_id, run, message_id)
            await _until_end(run, sse)
    finally:
        run.unsubscribe(sse)
    if sse.resp is None:
        if sse.gone.is_set():
            return web.Response(status=499)
        err = sse.error or GatewayError("internal_error", "no reply")
        return error_response(err)
    if not sse.gone.is_set():
        with contextlib.suppress(ConnectionError, RuntimeError):
            await sse.write(encoder.finish())
            await sse.resp.write_eof()
    return sse.resp


async def chat_stream(request: web.Request) -> web.StreamResponse:
    """``reconnectToStream``: the reply from its start, then live; 204 when there is none."""
    gw: Gateway = request.app["gateway"]
    chat_id = request.match_info["id"]
    try:
        principal = await gw.access.authenticate_http(request)
        found = await chat_streams(gw).find(principal, chat_id)
    except GatewayError as err:
        return error_response(err)
    if found is None:
        return web.Response(status=204)
    run, message_id = found
    try:
        replay = run.gen.after(-1)
    except GatewayError:
        return web.Response(status=204)
    gw.registry.stats["resumes"] += 1
    encoder = aisdk.SSEEncoder(message_id)
    sse = UIStreamResponder(request, encoder)
    live = not run.gen.ended
    if live:
        sse.pending = []
        run.subscribe(sse)  # in the same step as the replay was taken: no gap, no repeat
    watch: DisconnectWatch = request.app[DISCONNECTS]
    try:
        with watch.following(request, run, sse, KEEPALIVE):
            await sse.start()  # the headers now: the replay follows
            for rest in replay:
                await sse.write(encoder.encode(rest, 0, None))
            if live:
                while sse.pending:
                    batch, sse.pending = sse.pending, []
                    for rest, kind, value in batch:
                        await sse.write(encoder.encode(rest, kind, value))
                sse.pending = None
                await _until_end(run, sse)
        if not sse.gone.is_set():
            await sse.write(encoder.finish())
            await sse.resp.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client left; the run goes on
    finally:
        if live:
            run.unsubscribe(sse)
    return sse.resp


async def chat_stop(request: web.Request) -> web.Response:
    """Cancel the chat's reply at the provider (this instance or, over Redis, its owner)."""
    gw: Gateway = request.app["gateway"]
    chat_id = request.match_info["id"]
    try:
        principal = await gw.access.authenticate_http(request)
        found = await chat_streams(gw).find(principal, chat_id)
        if found is None:
            raise GatewayError("not_found", f"no reply is running or retained for chat {chat_id[:128]}")
    except GatewayError as err:
        return error_response(err)
    run, _ = found
    stopped = not run.gen.ended
    if stopped:
        run.cancel("cancelled")
    return web.Response(body=orjson.dumps({"stopped": stopped}), content_type="application/json")
