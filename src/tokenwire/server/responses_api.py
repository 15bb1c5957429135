"""OpenAI Responses API over HTTP: ``/v1/responses`` (create, retrieve, stream, cancel).

The body is decoded by :mod:`tokenwire.dialects.openai_responses`; the chat goes
through :meth:`Gateway.start_chat` like every other entry point and the run's events
are written by that dialect's encoder. A stored response (``store``, the default) is
kept in the conversation store under ``resp/<id>``, scoped to the API key that made
it (``relay.conversation_key``): its whole context (input and output as OpenAI Chat
messages, without the instructions, which OpenAI does not carry over) plus the
Response object, so ``previous_response_id`` continues it on any instance sharing the
store. It is written by the run's end hook, before the stream's last event goes out:
a client can continue a response the moment it sees ``response.completed``.

A background response is a resumable run whose id is its ``stream_id``: ``GET
/v1/responses/{id}?stream=true&starting_after=N`` re-encodes its log from the start
(so every instance numbers the events the same way), sends those after N and follows
the live tail, locally or from another instance over Redis (``gw.find_stream``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..dialects import openai_responses as dialect
from ..protocol.errors import GatewayError
from ..protocol.events import END, ERROR
from ..protocol.frames import Attach, validate_messages
from ..runtime.relay import conversation_key
from .errors import error_response
from .http_api import DISCONNECTS, KEEPALIVE, read_json_body
from .streaming import SSEResponder
from .ws import new_socket, serve_socket

if TYPE_CHECKING:
    from ..runtime.gateway import Gateway
    from ..runtime.relay import Run
    from .connection import WSConnection
    from .ws import Session

__all__ = ["ResponsesSocket", "cancel_response", "create_response", "get_response", "responses_websocket"]

#: the role of the stored Response object among a stored response's messages
_RECORD = "x-response"
_PENDING = ("queued", "in_progress")
#: the Response object's fields that are not the request's echo
_NOT_ECHO = frozenset(
    {"id", "object", "created_at", "status", "error", "incomplete_details", "output", "usage", "completed_at"}
)
_CANCEL_WAIT = 10.0


def _fail(err: GatewayError) -> web.Response:
    return error_response(err, dialect.error_body(err))


def _not_found(response_id: str) -> GatewayError:
    return GatewayError("not_found", f"No response found with id '{response_id[:64]}'.", extra={"param": "response_id"})


def _key(response_id: str, principal: Any) -> str:
    key = conversation_key("resp/" + response_id, principal)
    assert key is not None
    return key


async def _load(gw: Gateway, principal: Any, response_id: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """A stored response's context messages and its Response object (None: not stored, or another key's)."""
    if not dialect.is_response_id(response_id):
        return [], None
    history = await gw.store.history(_key(response_id, principal))
    context = [m for m in history if m.get("role") != _RECORD and m.get("role") != "system"]
    records = [m["content"] for m in history if m.get("role") == _RECORD and isinstance(m.get("content"), dict)]
    final = [r for r in records if r.get("status") not in _PENDING]
    record = final[-1] if final else records[-1] if records else None
    return context, record


def _echo(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _NOT_ECHO}


def _output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as the OpenAI Chat assistant message a next turn sends upstream."""
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in output:
        if item.get("type") == "message":
            text.extend(p.get("text", "") for p in item.get("content") or [])
        elif item.get("type") == "function_call":
            calls.append(
                {
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item.get("arguments", "")},
                }
            )
    if not text and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _store_on_end(
    gw: Gateway, key: str, context: list[dict[str, Any]], state: dialect.ResponsesEncoder
) -> Callable[[Run], Awaitable[None]]:
    async def store(run: Run) -> None:
        s = run.summary
        if s is None:
            return
        end = {
            "status": s.status,
            "finish_reason": s.finish_reason,
            "usage": s.usage,
            "timing": s.timing,
            "model": s.model,
        }
        final = state.finish(end, s.error)
        await gw.store.append(key, [*context, *_output_messages(final["output"]), {"role": _RECORD, "content": final}])

    return store


class _Feed:
    """Feeds a run's events to a no-bytes encoder (a non-streamed or a background response)."""

    __slots__ = ("encoder", "error")

    def __init__(self, encoder: dialect.ResponsesEncoder) -> None:
        self.encoder = encoder
        self.error: GatewayError | None = None

    def send(self, rest: bytes, kind: int, value: Any) -> None:
        if kind == ERROR and isinstance(value, GatewayError):
            self.error = value
        self.encoder.encode(rest, kind, value)


class _Follower:
    """A replay-then-live subscriber: each event re-encoded from its logged form, queued for one writer.

    Events are decoded from ``rest`` (the log's encoding), not taken from ``kind``/``value``,
    so a local run and another instance's RemoteRun feed the encoder identically.
    """

    __slots__ = ("buf", "done", "encoder", "gone", "wake")

    def __init__(self, encoder: dialect.ResponsesEncoder) -> None:
        self.encoder = encoder
        self.buf: list[bytes] = []
        self.done = False
        self.gone = False  #: the client left, or was cut for reading nothing (the run goes on)
        self.wake = asyncio.Event()

    def send(self, rest: bytes, kind: int, value: Any) -> None:
        if self.gone:
            raise ConnectionResetError("the client is gone")
        kind, value = dialect.decode_rest(rest)
        data = self.encoder.encode(rest, kind, value)
        if data:
            self.buf.append(data)
        if kind == END:
            self.done = True
        self.wake.set()


class _FollowResponse(SSEResponder):
    """The follower's response: the watch can cut it, and its loop hears of a client gone."""

    __slots__ = ("sub",)

    def __init__(self, request: web.Request, sub: _Follower) -> None:
        super().__init__(request, sub.encoder)
        self.sub = sub

    def _lost(self) -> None:
        self.sub.gone = True
        self.sub.wake.set()


async def _follow(request: web.Request, run: Any, encoder: dialect.ResponsesEncoder) -> web.StreamResponse:
    """Replay a run's log through ``encoder`` (which drops what the client has), then follow it live.

    A background response outlives its client: one that leaves, or reads nothing for
    ``slow_consumer_timeout`` seconds (then cut with the ``error`` event), is let go and the
    run goes on, to be attached again with ``starting_after``.
    """
    sub = _Follower(encoder)
    for rest in run.gen.after(-1):  # replay and subscribe with no await between: nothing missed, nothing twice
        sub.send(rest, -1, None)
    watching = not sub.done and not run.gen.ended
    if watching:
        run.subscribe(sub)
    ended = asyncio.ensure_future(run.ended.wait())
    ended.add_done_callback(lambda _: sub.wake.set())
    sse = _FollowResponse(request, sub)
    try:
        with request.app[DISCONNECTS].following(request, run, sse, KEEPALIVE):
            await sse.start()
            while not sub.gone:
                if sub.buf:
                    data = b"".join(sub.buf)
                    sub.buf.clear()
                    await sse.write(data)
                    continue
                if sub.done or not watching or run.ended.is_set():
                    break
                sub.wake.clear()
                await sub.wake.wait()
        if not sub.gone:
            await sse.finish()
    except (ConnectionError, RuntimeError):
        pass  # the client left: a background response goes on, it can attach again
    finally:
        ended.cancel()
        if watching:
            run.unsubscribe(sub)
    assert sse.resp is not None
    return sse.resp


async def _find_run(gw: Gateway, principal: Any, response_id: str) -> Any | None:
    """The run of a response, here or on another instance; None if none is kept (or it is another key's)."""
    if not dialect.is_response_id(response_id):
        return None
    try:
        return await gw.find_stream(principal, Attach("http", response_id, -1))
    except GatewayError as err:
        if err.code in ("stream_expired", "forbidden"):
            return None
        raise


async def _begin(
    gw: Gateway, principal: Any, body: dict[str, Any]
) -> tuple[dialect.ResponsesRequest, Run, list[dict[str, Any]], str]:
    """Decode a create request, load what it continues, start its run: ``(request, run, context, response id)``."""
    req = dialect.parse_request(body, gw.limits)
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        history, prev = await _load(gw, principal, req.previous_response_id)
        if prev is None:
            raise GatewayError(
                "not_found",
                f"\"previous_response_id\": no response with id '{req.previous_response_id}' was found",
                extra={"param": "previous_response_id"},
            )
        if prev.get("status") in _PENDING:
            raise GatewayError(
                "bad_request",
                f"Previous response '{req.previous_response_id}' is still {prev['status']}; wait for its end",
                extra={"param": "previous_response_id"},
            )
    context = [*history, *req.input_messages]
    chat = req.chat
    chat.messages = [{"role": "system", "content": req.instructions}, *context] if req.instructions else context
    validate_messages(chat.messages, gw.limits)
    response_id = dialect.new_response_id()
    chat.stream_id = response_id
    run = await gw.start_chat(principal, chat, resumable=req.background)
    return req, run, context, response_id


async def create_response(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.access.authenticate_http(request)
        body = await read_json_body(request, gw.settings.max_frame_bytes)
        req, run, context, response_id = await _begin(gw, principal, body)
    except GatewayError as err:
        return _fail(err)
    echo = {**req.echo, "model": run.route.model, "background": req.background, "store": req.store}
    key = _key(response_id, principal)
    if req.background:
        state = dialect.ResponsesEncoder(response_id, echo, sse=False)
        run.on_end = _store_on_end(gw, key, context, state)
        run.subscribe(_Feed(state))  # keeps the run going with nobody watching, to its end
        queued = state.response("queued")
        try:
            await gw.store.append(key, [{"role": _RECORD, "content": queued}])
        except Exception as exc:
            run.cancel("store_unavailable")
            return _fail(GatewayError("store_unavailable", f"could not store the response ({type(exc).__name__})"))
        if req.stream:
            return await _follow(request, run, dialect.ResponsesEncoder(response_id, echo))
        return web.Response(body=orjson.dumps(queued), content_type="application/json")
    if req.stream:
        encoder = dialect.ResponsesEncoder(response_id, echo)
        if req.store:
            run.on_end = _store_on_end(gw, key, context, encoder)
        sse = SSEResponder(request, encoder)
        run.subscribe(sse)
        # as chat completions: a client that leaves cancels the run, a silent stream is kept
        # alive, one that reads nothing is cut (slow_consumer)
        await request.app[DISCONNECTS].wait(request, run, sse, KEEPALIVE)
        if sse.resp is None:
            return _fail(sse.error or GatewayError("internal_error", "no reply"))
        return await sse.finish()
    state = dialect.ResponsesEncoder(response_id, echo, sse=False)
    if req.store:
        run.on_end = _store_on_end(gw, key, context, state)
    feed = _Feed(state)
    run.subscribe(feed)
    await run.ended.wait()
    if feed.error is not None and not state.items:
        return _fail(feed.error)
    return web.Response(body=orjson.dumps(state.final or state.snapshot()), content_type="application/json")


def _query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise GatewayError("bad_request", f'"{name}" must be an integer', extra={"param": name}) from None
    if value < -1:
        raise GatewayError("bad_request", f'"{name}" must be at least -1', extra={"param": name})
    return value


async def get_response(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app["gateway"]
    response_id = request.match_info["rid"]
    try:
        principal = await gw.access.authenticate_http(request)
        stream = request.query.get("stream", "false").lower() in ("true", "1")
        starting_after = _query_int(request, "starting_after", -1)
        _, record = await _load(gw, principal, response_id)
        if record is None:
            raise _not_found(response_id)
        if stream:
            run = await _find_run(gw, principal, response_id)
            if run is None:
                raise GatewayError(
                    "stream_expired",
                    f"the events of response {response_id} are no longer kept; GET it without stream=true",
                    extra={"param": "stream"},
                )
            encoder = dialect.ResponsesEncoder(response_id, _echo(record), starting_after=starting_after)
            return await _follow(request, run, encoder)
        if record.get("status") in _PENDING:
            run = await _find_run(gw, principal, response_id)
            if run is not None:  # where it has got to: its log so far, through the same encoder
                state = dialect.ResponsesEncoder(response_id, _echo(record), sse=False)
                for rest in run.gen.after(-1):
                    kind, value = dialect.decode_rest(rest)
                    state.encode(rest, kind, value)
                record = state.snapshot()
    except GatewayError as err:
        return _fail(err)
    return web.Response(body=orjson.dumps(record), content_type="application/json")


async def cancel_response(request: web.Request) -> web.Response:
    """Stop a background response (here or on another instance), then answer with how it ended."""
    gw: Gateway = request.app["gateway"]
    response_id = request.match_info["rid"]
    try:
        principal = await gw.access.authenticate_http(request)
        run = await _find_run(gw, principal, response_id)
        if run is not None and run.resumable and not run.gen.ended:
            run.cancel("cancelled")  # first of all: the upstream request is closed at once
            sub = _Follower(dialect.ResponsesEncoder(response_id, {}, sse=False))
            run.subscribe(sub)  # to answer once it has ended (and its final state is stored)
            waiter = asyncio.ensure_future(run.ended.wait())
            waiter.add_done_callback(lambda _: sub.wake.set())
            try:
                async with asyncio.timeout(_CANCEL_WAIT):
                    while not sub.done and not run.ended.is_set():
                        sub.wake.clear()
                        await sub.wake.wait()
            except TimeoutError:
                pass
            finally:
                waiter.cancel()
                run.unsubscribe(sub)
        _, record = await _load(gw, principal, response_id)
        if record is None:
            raise _not_found(response_id)
    except GatewayError as err:
        return _fail(err)
    return web.Response(body=orjson.dumps(record), content_type="application/json")


# -- WebSocket mode ---------------------------------------------------------------------


class _WSWriter:
    """A run's events as WebSocket text frames, one per event (the encoder's lines), through the socket's owner."""

    __slots__ = ("encode", "writer")

    def __init__(self, writer: WSConnection, encoder: dialect.ResponsesEncoder) -> None:
        self.writer = writer  # the relay corks it for bursts
        self.encode = encoder.encode

    def send(self, rest: bytes, kind: int, value: Any) -> Awaitable[None] | None:
        data = self.encode(rest, kind, value)
        if not data:
            return None
        writer = self.writer
        if data.count(b"\n") == 1:  # the hot path: one event (orjson escapes newlines inside strings)
            return writer.write(data[:-1])
        corked = writer.cork()  # several events (an item's end and the next one's start): one send
        for line in data.split(b"\n")[:-1]:
            writer.write(line)
        return writer.uncork() if corked else None

    def cut_frames(self, err: GatewayError) -> list[bytes]:
        """The ``error`` event when the socket cuts the response (the slow consumer); its end follows if it fits."""
        return self.encode(b"", ERROR, err).split(b"\n")[:-1]


class ResponsesSocket:
    """The WebSocket mode's frames: ``response.create`` in, each response's events out, one at a time.

    A :class:`~tokenwire.server.ws.SocketDialect`: the socket itself (reading, pings, idle and
    drain closes, backpressure, the slow-consumer cut-off, the gauges) is the session's, as for
    every other socket. A response runs held on the session, so a client that closes the socket
    mid-response is seen at once and its response cancelled (the upstream request closed).
    """

    def __init__(self, gw: Gateway, principal: Any) -> None:
        self.gw = gw
        self.principal = principal
        self.current: Run | None = None

    @staticmethod
    def error_frame(err: GatewayError) -> bytes:
        body = dialect.error_body(err)["error"]
        fields = {k: body[k] for k in ("type", "code", "message", "param")}
        return orjson.dumps({"type": "error", "status": err.http_status, "error": fields})

    async def handle(self, session: Session, text: str) -> None:
        gw = self.gw
        try:
            body = orjson.loads(text)
            if type(body) is not dict or body.get("type") != "response.create":
                raise GatewayError("bad_request", 'expected a "response.create" event', extra={"param": "type"})
            current = self.current
            if current is not None and not current.gen.ended:
                raise GatewayError(
                    "conversation_busy",
                    f"response {current.gen.stream_id} is still in progress on this socket; wait for its end",
                )
            body = {k: v for k, v in body.items() if k not in ("type", "generate", "stream")}
            if body.get("background"):
                raise GatewayError(
                    "bad_request", '"background" is not supported over WebSocket', extra={"param": "background"}
                )
            req, run, context, response_id = await _begin(gw, self.principal, body)
        except orjson.JSONDecodeError:
            await session.send_error(GatewayError("invalid_json", "the frame is not valid JSON"))
            return
        except GatewayError as err:
            await session.send_error(err)
            return
        echo = {**req.echo, "model": run.route.model, "background": False, "store": req.store}
        encoder = dialect.ResponsesEncoder(response_id, echo, ws=True)
        if req.store:
            run.on_end = _store_on_end(gw, _key(response_id, self.principal), context, encoder)
        sub = _WSWriter(session.conn, encoder)
        run.subscribe(sub)  # before any await: the run's first events must reach it
        session.hold("responses:" + response_id, run, sub)
        self.current = run


async def responses_websocket(request: web.Request) -> web.StreamResponse:
    """``GET /v1/responses`` upgraded: a session whose frames :class:`ResponsesSocket` reads."""
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.access.authenticate_http(request)
    except GatewayError as err:
        return _fail(err)
    if gw.draining:
        return _fail(GatewayError("shutting_down", "shutting down: reconnect to another instance"))
    ws = new_socket(gw)
    if not ws.can_prepare(request).ok:
        return _fail(GatewayError("bad_request", "GET /v1/responses is the WebSocket mode: upgrade the connection"))
    return await serve_socket(gw, request, ws, principal, ResponsesSocket(gw, principal))
