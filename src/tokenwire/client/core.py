"""``AsyncClient``: one multiplexed WebSocket with resume, heartbeat and backpressure.

Design, in short:

* One socket per client, one reader task per socket (never a task per token). The reader
  parses every frame and appends it to the buffer of the generation it belongs to.
* Every ``stream()`` sends a random ``stream_id``, so the generation is resumable: after a
  reconnect the client sends ``attach`` with the last ``seq`` it received, and drops any event
  whose ``seq`` it already has. Tokens are delivered exactly once, in order.
* The reader also does the heartbeat: with no frame for ``heartbeat_interval`` it sends an
  application ``ping``; with still nothing ``heartbeat_timeout`` later the socket is dead.
* Each generation has a bounded buffer: at ``high_water`` queued tokens the client sends
  ``pause`` for that generation, at ``low_water`` ``resume``. Tokens already on the wire are
  kept (never dropped); at ``max_buffer`` the reader stops reading the socket until the
  consumer makes room, so memory is bounded whatever the consumer's speed. That last resort
  holds up the socket's other streams too, so it sits well above ``high_water`` (4x by default):
  a gateway that honours ``pause`` never lets a stream get there.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from .errors import AuthError, ConnectionLostError, StreamExpiredError, TokenwireError, error_from_event

__all__ = ["DEFAULT_URL", "AsyncClient", "Completion", "Conversation", "TokenStream", "backoff_delay"]

DEFAULT_URL = "ws://127.0.0.1:8000/ws/chat"
SUBPROTOCOL = "tokenwire.v1"
FINAL_CLOSE_CODES = frozenset({4003, 1008})  #: auth/policy refused: never retried
CLOSE_DRAIN = 4001  #: the server is restarting: reconnect at once and resume
_PING = '{"type":"ping"}'
_TEXT = aiohttp.WSMsgType.TEXT
_CLOSES = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
_TOKEN, _REASONING, _TOOL = 0, 1, 2


def backoff_delay(
    attempt: int,
    base: float = 1.0,
    cap: float = 30.0,
    rng: Callable[[float, float], float] = random.uniform,
) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^attempt)], so a fleet of clients cut at
    the same moment does not reconnect in lock-step."""
    return rng(0.0, min(cap, base * (2 ** max(0, attempt))))


@dataclass
class Completion:
    """A finished reply: its text plus what the server reported at ``end``."""

    text: str
    status: str
    finish_reason: str | None
    usage: dict[str, Any]
    timing: dict[str, Any]
    cost_usd: float | None
    model: str | None
    provider: str | None
    stream_id: str
    conversation_id: str | None = None
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    client_ttft_ms: float | None = None  #: measured here, network included

    @property
    def tokens(self) -> int:
        return int(self.usage.get("completion_tokens") or 0)

    def __str__(self) -> str:
        return self.text


class _Stream:
    """The client's side of one generation: its buffer and where it stands."""

    __slots__ = (
        "client",
        "closed",
        "done",
        "end",
        "error",
        "frame",
        "high",
        "id",
        "last_seq",
        "low",
        "max_buffer",
        "max_buffered",
        "opened",
        "parts",
        "paused",
        "pauses",
        "q",
        "reasoning",
        "resume_pending",
        "resumes",
        "retried_chat",
        "space",
        "start",
        "stream_id",
        "sync_event",
        "t0",
        "t_first",
        "tool_calls",
        "waiter",
    )

    def __init__(self, client: AsyncClient, id: str, frame: dict[str, Any]) -> None:
        self.client = client
        self.id = id
        self.frame = frame
        self.stream_id: str = frame["stream_id"]
        self.q: deque[tuple[int, Any]] = deque()
        self.high = client.high_water
        self.low = client.low_water
        self.max_buffer = client.max_buffer
        self.last_seq = -1
        self.start: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.done = False  # no more events will come (end, error or cancelled)
        self.closed = False  # the consumer is finished with it
        self.opened = False
        self.waiter: asyncio.Future[None] | None = None
        self.space: asyncio.Future[None] | None = None
        self.sync_event: threading.Event | None = None
        self.paused = False
        self.resume_pending = False
        self.pauses = 0
        self.resumes = 0
        self.max_buffered = 0
        self.retried_chat = False
        self.parts: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.t0 = 0.0
        self.t_first: float | None = None

    # -- reader side (event loop) -----------------------------------------------
    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)
        if self.sync_event is not None:
            self.sync_event.set()

    def finish(self, error: BaseException | None = None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.done = True
        self.make_room()
        self.wake()

    def make_room(self) -> None:
        s = self.space
        if s is not None and not s.done():
            s.set_result(None)

    # -- consumer side ------------------------------------------------------------
    async def next(self) -> str:
        if not self.opened:
            try:
                await self.client._start(self)
            except asyncio.CancelledError:
                self.abandon()
                raise
        q = self.q
        while True:
            if q:
                kind, value = q.popleft()
                if self.space is not None:
                    self.make_room()
                if self.paused and not self.resume_pending and len(q) <= self.low:
                    try:
                        await self.client._resume(self)
                    except asyncio.CancelledError:
                        self.abandon()
                        raise
                if kind == _TOKEN:
                    self.parts.append(value)
                    return value
                if kind == _REASONING:
                    self.reasoning.append(value)
                else:
                    self.tool_calls.append(value)
                continue
            if self.error is not None:
                self.closed = True
                raise self.error
            if self.done or self.closed:
                self.closed = True
                raise StopAsyncIteration
            self.waiter = self.client._loop_or_running().create_future()
            try:
                await self.waiter
            except asyncio.CancelledError:
                self.abandon()
                raise
            finally:
                self.waiter = None

    async def close(self) -> None:
        """Stop consuming; if the generation is still running, cancel it on the server."""
        if self.closed and self.done:
            return
        self.closed = True
        client = self.client
        if client._streams.get(self.id) is self:
            del client._streams[self.id]
        running = self.opened and not self.done
        self.done = True
        self.q.clear()
        self.make_room()
        self.wake()
        if running and not await client._send_quiet({"type": "cancel", "id": self.id}) and not client._closed:
            client._orphans.append(self)  # the socket is down: cancel it after the reconnect

    def abandon(self) -> None:
        """Sync variant of close() for ``__del__``/cancellation: schedules the cancel."""
        if self.closed and self.done:
            return
        client = self.client
        loop = client._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(client._close_later, self)
        except RuntimeError:  # loop closed meanwhile
            pass

    def result(self) -> Completion:
        end = self.end
        if end is None:
            raise RuntimeError("the reply has not ended yet")
        return Completion(
            text="".join(self.parts),
            status=str(end.get("status")),
            finish_reason=end.get("finish_reason"),
            usage=end.get("usage") or {},
            timing=end.get("timing") or {},
            cost_usd=end.get("cost_usd"),
            model=end.get("model"),
            provider=end.get("provider"),
            stream_id=self.stream_id,
            conversation_id=(self.start or {}).get("conversation_id"),
            reasoning="".join(self.reasoning),
            tool_calls=list(self.tool_calls),
            client_ttft_ms=round((self.t_first - self.t0) * 1000, 2) if self.t_first is not None else None,
        )


class TokenStream:
    """Async iterator of one reply's tokens (strings). Leaving the loop early, cancelling the
    task or ``aclose()`` cancels the generation on the server; ``result`` holds usage and timing."""

    __slots__ = ("__weakref__", "_s")

    def __init__(self, state: _Stream) -> None:
        self._s = state

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> str:
        return await self._s.next()

    async def aclose(self) -> None:
        await self._s.close()

    async def __aenter__(self) -> TokenStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._s.close()

    def __del__(self) -> None:  # an abandoned `async for` still cancels its generation
        try:
            self._s.abandon()
        except Exception:
            pass

    @property
    def id(self) -> str:
        return self._s.id

    @property
    def stream_id(self) -> str:
        return self._s.stream_id

    @property
    def result(self) -> Completion:
        """Text, usage, timing, cost — once the reply has ended."""
        return self._s.result()

    @property
    def stats(self) -> dict[str, int]:
        """Flow-control counters: pauses/resumes sent, largest buffer seen, buffer now."""
        s = self._s
        return {"pauses": s.pauses, "resumes": s.resumes, "max_buffered": s.max_buffered, "buffered": len(s.q)}


class Conversation:
    """A multi-turn chat kept server-side under one ``conversation_id`` (history and system
    prompt are stored by the gateway, so each turn sends only the new user message)."""

    def __init__(
        self,
        client: AsyncClient,
        system: str | None = None,
        conversation_id: str | None = None,
        model: str | None = None,
    ) -> None:
        self.client = client
        self.system = system
        self.id = conversation_id or "conv_" + uuid.uuid4().hex
        self.model = model

    def stream(self, content: str, **kwargs: Any) -> TokenStream:
        kwargs.setdefault("model", self.model)
        return self.client.stream(content, system=self.system, conversation_id=self.id, **kwargs)

    async def complete(self, content: str, **kwargs: Any) -> Completion:
        kwargs.setdefault("model", self.model)
        return await self.client.complete(content, system=self.system, conversation_id=self.id, **kwargs)


class AsyncClient:
    """A tokenwire WebSocket client: ``async with AsyncClient(url) as c: async for t in c.stream(…)``.

    The socket is opened on entry (or first use) and re-opened on demand; concurrent
    ``stream()`` calls share it. See docs/client.md for every option.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        model: str | None = None,
        connect_timeout: float = 10.0,
        heartbeat_interval: float = 15.0,
        heartbeat_timeout: float = 10.0,
        reconnect: bool = True,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        max_attempts: int = 5,
        high_water: int = 100,
        low_water: int = 20,
        max_buffer: int | None = None,
    ) -> None:
        if not 0 <= low_water < high_water:
            raise ValueError("need 0 <= low_water < high_water")
        self.url = url
        self.model = model
        self.connect_timeout = connect_timeout
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.reconnect = reconnect
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_attempts = max(1, max_attempts)
        self.high_water = high_water
        self.low_water = low_water
        self.max_buffer = max(max_buffer if max_buffer is not None else 4 * high_water, high_water)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._rx_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[BaseException | None] | None = None
        self._streams: dict[str, _Stream] = {}
        self._orphans: list[_Stream] = []  # closed while the socket was down; cancelled on reattach
        self._bg: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next = 0
        self._closed = False
        self.connect_ms: list[float] = []  #: latency of each successful connect
        self.stats: dict[str, Any] = {
            "connects": 0,
            "reconnects": 0,
            "heartbeat_timeouts": 0,
            "streams": 0,
            "errors": 0,
            "last_disconnect": None,  # (reason, close code, time.monotonic())
        }

    # -- lifecycle ------------------------------------------------------------------
    async def __aenter__(self) -> AsyncClient:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and self._connecting is None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def active(self) -> int:
        """Generations in flight on this client."""
        return len(self._streams)

    async def connect(self) -> None:
        """Open the socket now (otherwise the first request does); retries with backoff."""
        await self._ensure_connected()

    async def close(self) -> None:
        """Cancel running generations, close the socket; leaves no task, socket or callback."""
        if self._closed:
            return
        self._closed = True
        streams = list(self._streams.values())
        self._streams.clear()
        ws = self._ws
        for st in streams:
            if ws is not None and not ws.closed and st.opened and not st.done:
                await self._send_quiet({"type": "cancel", "id": st.id})
            st.finish(ConnectionLostError("client_closed", "the client was closed", retryable=False))
        # Close with a handshake while the reader still drains the socket: closing a TCP socket
        # with unread data sends RST, and an RST can destroy the cancel frames sent just before.
        if ws is not None and not ws.closed:
            try:
                await asyncio.wait_for(ws.close(), 2.5)
            except (TimeoutError, aiohttp.ClientError, OSError, RuntimeError):
                _abort(ws)
        task = self._rx_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._rx_task = None
        self._ws = None
        for t in list(self._bg):
            t.cancel()
        if self._bg:
            await asyncio.gather(*self._bg, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests ---------------------------------------------------------------------
    def stream(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        system: str | None = None,
        conversation_id: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> TokenStream:
        """Stream a reply's tokens. ``prompt`` is a user message or an OpenAI-style message list.

        Nothing is sent until the first iteration.
        """
        self._next += 1
        id = f"r{self._next}"
        frame: dict[str, Any] = {"type": "chat", "id": id, "stream_id": uuid.uuid4().hex}
        model = model or self.model
        if model:
            frame["model"] = model
        if conversation_id is not None and isinstance(prompt, str):
            frame["content"] = prompt
            frame["conversation_id"] = conversation_id
            if system is not None:
                frame["system"] = system
        else:
            if isinstance(prompt, str):
                messages: list[Any] = [{"role": "user", "content": prompt}]
            else:
                messages = [dict(m) for m in prompt]
            if system is not None and not any(m.get("role") == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": system})
            frame["messages"] = messages
            if conversation_id is not None:
                frame["conversation_id"] = conversation_id
        p = dict(params or {})
        if max_tokens is not None:
            p["max_tokens"] = max_tokens
        if temperature is not None:
            p["temperature"] = temperature
        if p:
            frame["params"] = p
        return TokenStream(_Stream(self, id, frame))

    async def complete(self, prompt: str | Sequence[Mapping[str, Any]], **kwargs: Any) -> Completion:
        """The whole reply at once (same arguments as :meth:`stream`)."""
        s = self.stream(prompt, **kwargs)
        try:
            async for _ in s:
                pass
        finally:
            await s.aclose()
        return s.result

    def conversation(
        self, system: str | None = None, *, conversation_id: str | None = None, model: str | None = None
    ) -> Conversation:
        """A multi-turn helper; pass ``conversation_id`` to continue a stored conversation."""
        return Conversation(self, system, conversation_id, model)

    # -- internals: sending -------------------------------------------------------------
    def _loop_or_running(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def _send_quiet(self, obj: dict[str, Any]) -> bool:
        """Send a control frame; a dead socket is not an error here (the reader handles it)."""
        ws = self._ws
        if ws is None or ws.closed:
            return False
        try:
            await ws.send_str(orjson.dumps(obj).decode())
            return True
        except (ConnectionError, RuntimeError, aiohttp.ClientError, OSError):
            return False

    def _spawn(self, coro: Any) -> None:
        task = self._loop_or_running().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def _close_later(self, st: _Stream) -> None:
        if not self._closed:
            self._spawn(st.close())

    async def _start(self, st: _Stream) -> None:
        st.opened = True
        try:
            await self._ensure_connected()
        except BaseException:
            st.done = st.closed = True
            raise
        self._streams[st.id] = st
        self.stats["streams"] += 1
        st.t0 = time.monotonic()
        await self._send_quiet(st.frame)  # if lost, the reconnect's attach/re-send covers it

    async def _resume(self, st: _Stream) -> None:
        st.resume_pending = True
        try:
            if await self._send_quiet({"type": "resume", "id": st.id}):
                st.paused = False
                st.resumes += 1
        finally:
            st.resume_pending = False

    # -- internals: the connection ------------------------------------------------------
    async def _ensure_connected(self) -> None:
        loop = self._loop_or_running()
        while True:
            if self._closed:
                raise ConnectionLostError("client_closed", "the client is closed", retryable=False)
            if self._connecting is not None:
                err = await asyncio.shield(self._connecting)
                if err is not None:
                    raise err
                continue
            if self._ws is not None and not self._ws.closed:
                return
            fut: asyncio.Future[BaseException | None] = loop.create_future()
            self._connecting = fut
            error: BaseException | None = None
            try:
                ws = await self._connect_with_retry(immediate=True)
                if self._closed:  # close() ran while we were connecting: leave nothing open
                    _abort(ws)
                    self._ws = None
                    if self._session is not None:
                        await self._session.close()
                        self._session = None
                    raise ConnectionLostError("client_closed", "the client was closed", retryable=False)
                self._rx_task = loop.create_task(self._run(ws))
            except TokenwireError as exc:
                error = exc
            finally:
                self._connecting = None
                fut.set_result(error)
            if error is not None:
                raise error

    async def _connect_with_retry(self, immediate: bool) -> aiohttp.ClientWebSocketResponse:
        last: BaseException | None = None
        attempts = self.max_attempts if self.reconnect else 1
        for attempt in range(attempts):
            if attempt > 0 or not immediate:
                await asyncio.sleep(backoff_delay(attempt, self.backoff_base, self.backoff_cap))
            if self._closed:
                break
            try:
                return await self._open_socket()
            except AuthError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = exc
        raise ConnectionLostError(
            "connection_lost",
            f"could not connect to {self.url} after {attempts} attempt(s): {type(last).__name__}: {last}",
        )

    async def _open_socket(self) -> aiohttp.ClientWebSocketResponse:
        if self._closed:
            raise ConnectionLostError("client_closed", "the client was closed", retryable=False)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await self._session.ws_connect(
                    self.url,
                    headers=self._headers,
                    protocols=(SUBPROTOCOL,),
                    autoping=True,
                    compress=0,
                    max_msg_size=16 * 1024 * 1024,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise AuthError(
                    "unauthorized" if exc.status == 401 else "forbidden",
                    f"the gateway refused the connection (HTTP {exc.status}): check the API key",
                    retryable=False,
                ) from None
            raise
        self.connect_ms.append((time.monotonic() - t0) * 1000)
        self.stats["connects"] += 1
        self._ws = ws
        return ws

    async def _run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read frames until the socket dies; then reconnect and re-attach if replies are in flight."""
        loop = self._loop_or_running()
        try:
            while True:
                reason, code = await self._read(ws)
                if self._closed:
                    return  # close() finishes the closing handshake
                _abort(ws)
                if self._ws is ws:
                    self._ws = None
                self.stats["last_disconnect"] = (reason, code, time.monotonic())
                if code in FINAL_CLOSE_CODES:
                    msg = f"the gateway closed the socket with {code} (authentication or policy)"
                    self._fail_all(AuthError("forbidden", msg, retryable=False))
                    return
                if not self._streams and not self._orphans:
                    return  # nothing in flight: reconnect lazily on the next request
                if not self.reconnect:
                    self._fail_all(ConnectionLostError("connection_lost", f"connection lost ({reason})"))
                    return
                self.stats["reconnects"] += 1
                fut: asyncio.Future[BaseException | None] = loop.create_future()
                self._connecting = fut
                error: BaseException | None = None
                try:
                    ws = await self._connect_with_retry(immediate=code == CLOSE_DRAIN)
                    await self._reattach()
                except TokenwireError as exc:
                    error = exc
                finally:
                    self._connecting = None
                    fut.set_result(error)
                if error is not None:
                    self._fail_all(error)
                    return
        except Exception as exc:  # a bug must not leave consumers waiting forever
            _abort(ws)
            self._ws = None
            self._fail_all(ConnectionLostError("connection_lost", f"client reader failed: {exc!r}", retryable=False))
        finally:
            if self._rx_task is asyncio.current_task():
                self._rx_task = None

    async def _reattach(self) -> None:
        orphans, self._orphans = self._orphans, []
        for st in orphans:  # take them back only to cancel them (their events are ignored)
            await self._send_quiet({"type": "attach", "id": st.id, "stream_id": st.stream_id, "last_seq": st.last_seq})
            await self._send_quiet({"type": "cancel", "id": st.id})
        for st in list(self._streams.values()):
            await self._send_quiet({"type": "attach", "id": st.id, "stream_id": st.stream_id, "last_seq": st.last_seq})
            if st.pauses:  # the server keeps a generation's pause across sockets: restate ours
                if st.paused and len(st.q) <= st.low:
                    st.paused = False
                await self._send_quiet({"type": "pause" if st.paused else "resume", "id": st.id})

    def _fail_all(self, error: BaseException) -> None:
        streams = list(self._streams.values())
        self._streams.clear()
        for st in streams:
            st.finish(error)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[str, int | None]:
        interval = self.heartbeat_interval or None
        timeout = self.heartbeat_timeout
        waiting_pong = False
        dispatch = self._dispatch
        while True:
            try:
                msg = await ws.receive(timeout=(timeout if waiting_pong else interval))
            except TimeoutError:
                # aiohttp marks a timed-out receive as an abnormal closure, which would make a
                # later close() skip its handshake (and reset the socket): it was only a timer
                ws._close_code = None
                if waiting_pong:
                    self.stats["heartbeat_timeouts"] += 1
                    return "heartbeat", None
                try:
                    async with asyncio.timeout(timeout):  # a peer that stopped reading blocks sends too
                        await ws.send_str(_PING)
                except TimeoutError:
                    self.stats["heartbeat_timeouts"] += 1
                    return "heartbeat", None
                except (ConnectionError, RuntimeError, aiohttp.ClientError, OSError):
                    return "send_failed", None
                waiting_pong = True
                continue
            waiting_pong = False  # any frame proves the peer is alive
            if msg.type == _TEXT:
                await dispatch(msg.data)
            elif msg.type in _CLOSES:
                return "closed", msg.data if msg.type == aiohttp.WSMsgType.CLOSE else ws.close_code
            elif msg.type == aiohttp.WSMsgType.ERROR:
                return "error", None

    async def _dispatch(self, data: str) -> None:
        try:
            ev = orjson.loads(data)
            typ = ev.get("type")
        except (orjson.JSONDecodeError, AttributeError):
            self.stats["errors"] += 1  # not a protocol frame: nothing to route it to
            return
        st = self._streams.get(ev.get("id"))  # type: ignore[arg-type]
        if st is None:
            if typ == "error":
                self.stats["errors"] += 1
            return
        seq = ev.get("seq")
        if seq is not None:
            if seq <= st.last_seq:
                return  # already delivered (replayed twice): exactly once
            if seq != st.last_seq + 1:
                del self._streams[st.id]
                st.finish(StreamExpiredError("stream_gap", f"events {st.last_seq + 1}..{seq - 1} are missing"))
                return
            st.last_seq = seq
        if typ == "token":
            item: tuple[int, Any] = (_TOKEN, ev.get("content") or "")
            if st.t_first is None:
                st.t_first = time.monotonic()
        elif typ == "start":
            st.start = ev
            return
        elif typ == "end":
            st.end = ev
            del self._streams[st.id]
            st.finish()
            return
        elif typ == "error":
            code = ev.get("code")
            if code == "not_found":
                return  # a pause/resume/cancel that raced the end of its generation
            if code == "stream_expired" and st.start is None and not st.retried_chat:
                st.retried_chat = True  # the chat never reached the server: send it again
                await self._send_quiet(st.frame)
                return
            self.stats["errors"] += 1
            del self._streams[st.id]
            st.finish(error_from_event(ev))
            return
        elif typ == "reasoning":
            item = (_REASONING, ev.get("content", ""))
        elif typ == "tool_call":
            item = (_TOOL, ev.get("delta") or {})
        else:
            return
        q = st.q
        q.append(item)
        n = len(q)
        if n > st.max_buffered:
            st.max_buffered = n
        st.wake()
        if n >= st.high and not st.paused:
            st.paused = True
            st.pauses += 1
            await self._send_quiet({"type": "pause", "id": st.id})
        if n >= st.max_buffer and not st.closed:
            st.space = self._loop_or_running().create_future()
            try:
                await st.space  # stop reading the socket: TCP holds the server back
            finally:
                st.space = None


def _abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop a socket without a closing handshake (the peer may be dead)."""
    if not ws.closed:
        try:
            ws._response.close()  # what aiohttp's own heartbeat does on a missing pong
        except Exception:
            pass
