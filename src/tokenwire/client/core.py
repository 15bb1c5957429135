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
  kept (never dropped); at ``max_buffer`` (a last resort, far above ``high_water``) the reader
  stops reading the socket until the consumer makes room, so memory is bounded whatever the
  consumer's speed.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import orjson

from ..protocol.events import CLOSE_DRAIN, REASONING, SUBPROTOCOL, TOKEN
from ..protocol.follower import Ended, Failed, Send, Stall, StrayError, StreamState, V1Client, Wake
from .errors import AuthError, ConnectionLostError, StreamExpiredError, TokenwireError, error_from_event

__all__ = ["DEFAULT_URL", "AsyncClient", "Completion", "Conversation", "TokenStream", "backoff_delay"]

DEFAULT_URL = "ws://127.0.0.1:8000/ws/chat"
FINAL_CLOSE_CODES = frozenset({4003, 1008})  #: auth/policy refused: never retried
_PING = '{"type":"ping"}'
_TEXT = aiohttp.WSMsgType.TEXT
_CLOSES = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


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


class _Stream(StreamState):
    """One generation as the I/O layer sees it: the protocol state (:class:`StreamState`, driven
    by the client's :class:`V1Client`) plus the handles that wake its consumer and what it took."""

    __slots__ = ("client", "error", "parts", "reasoning", "space", "sync_event", "tool_calls", "waiter")

    def __init__(self, client: AsyncClient, id: str, frame: dict[str, Any]) -> None:
        super().__init__(
            id, frame, high_water=client.high_water, low_water=client.low_water, max_buffer=client.max_buffer
        )
        self.client = client
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.space: asyncio.Future[None] | None = None
        self.sync_event: threading.Event | None = None
        self.parts: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []

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

    def keep(self, kind: int, value: Any) -> bool:
        """Record an item the consumer took; True if it is a token (to hand to the caller)."""
        if kind == TOKEN:
            self.parts.append(value)
            return True
        if kind == REASONING:
            self.reasoning.append(value)
        else:
            self.tool_calls.append(value)
        return False

    # -- consumer side ------------------------------------------------------------
    async def next(self) -> str:
        if not self.opened:
            await self.client._start(self)
        while True:
            item = self.take()
            if item is not None:
                if self.space is not None:
                    self.make_room()
                resume = self.consumed()
                if resume is not None:
                    await self.client._resume(self, resume)
                if self.keep(*item):
                    return item[1]
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
        cancel = self.client._v1.close(self)
        self.make_room()
        self.wake()
        if cancel is not None:
            await self.client._send_quiet(cancel)

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
        return {"pauses": s.pauses, "resumes": s.resumes, "max_buffered": s.max_buffered, "buffered": len(s.items)}


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
        # A last-resort cap, well above the pause point: reaching it stops reading the whole socket
        # (head-of-line blocking for the other streams), so it must not trip on the tokens that
        # are merely in flight while the pause travels to the server.
        default_cap = max(4 * high_water, high_water + 256)
        self.max_buffer = max(max_buffer if max_buffer is not None else default_cap, high_water)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._rx_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[BaseException | None] | None = None
        self._v1 = V1Client()  # the protocol decisions; this class only does the I/O
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
    def _streams(self) -> dict[str, _Stream]:
        """The generations in flight, by id (kept by the protocol machine)."""
        return cast(dict[str, _Stream], self._v1.streams)

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
        ws = self._ws
        for frame in self._v1.cancel_frames():
            await self._send_quiet(frame)
        for st in self._v1.drop_all():
            cast(_Stream, st).finish(ConnectionLostError("client_closed", "the client was closed", retryable=False))
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
        self._v1.begin(st)
        try:
            await self._ensure_connected()
        except BaseException:
            self._v1.open_failed(st)
            raise
        chat = self._v1.open(st, time.monotonic())
        self.stats["streams"] += 1
        await self._send_quiet(chat)  # if lost, the reconnect's attach/re-send covers it

    async def _resume(self, st: _Stream, frame: dict[str, Any]) -> None:
        """Send the ``resume`` that ``st.consumed()`` asked for, and tell it how that went."""
        ok = False
        try:
            ok = await self._send_quiet(frame)
        finally:
            st.resume_sent(ok)

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
                if not self._streams:
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
        finally:
            if self._rx_task is asyncio.current_task():
                self._rx_task = None

    async def _reattach(self) -> None:
        for frame in self._v1.reattach_frames():
            await self._send_quiet(frame)

    def _fail_all(self, error: BaseException) -> None:
        for st in self._v1.drop_all():
            cast(_Stream, st).finish(error)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[str, int | None]:
        interval = self.heartbeat_interval or None
        timeout = self.heartbeat_timeout
        waiting_pong = False
        dispatch = self._dispatch
        while True:
            try:
                msg = await ws.receive(timeout=(timeout if waiting_pong else interval))
            except TimeoutError:
                _forget_receive_timeout(ws)  # it was only our heartbeat timer
                if waiting_pong:
                    self.stats["heartbeat_timeouts"] += 1
                    return "heartbeat", None
                try:
                    await ws.send_str(_PING)
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
        """Feed one frame to the protocol machine and carry out what it says, in order."""
        for action in self._v1.receive(orjson.loads(data), time.monotonic()):
            if type(action) is Wake:  # the hot path: one per token
                action.stream.wake()  # type: ignore[attr-defined]  # every stream here is a _Stream
            elif isinstance(action, Send):
                await self._send_quiet(action.frame)
            elif isinstance(action, Stall):
                st = cast(_Stream, action.stream)
                if st.closed:  # the consumer left while the pause was being sent
                    continue
                st.space = self._loop_or_running().create_future()
                try:
                    await st.space  # stop reading the socket: TCP holds the server back
                finally:
                    st.space = None
            elif isinstance(action, Ended):
                cast(_Stream, action.stream).finish()
            elif isinstance(action, Failed):
                if action.event is None:  # found here (a gap), not reported by the server
                    error: BaseException = StreamExpiredError(action.code, action.message)
                else:
                    self.stats["errors"] += 1
                    error = error_from_event(action.event)
                cast(_Stream, action.stream).finish(error)
            elif isinstance(action, StrayError):
                self.stats["errors"] += 1


def _forget_receive_timeout(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Undo what a timed-out ``ws.receive(timeout=…)`` did to the socket.

    aiohttp treats a receive time-out as an abnormal closure: it sets the private
    ``ws._close_code`` to 1006, and a later ``close()`` then skips the closing handshake and just
    drops the connection (which can lose the cancel frames sent just before). Our time-out is only
    the heartbeat timer, so the code is reset. Pinned by tests/e2e/test_client_aiohttp_contract.py.
    """
    ws._close_code = None


def _abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop a socket without a closing handshake (the peer may be dead).

    aiohttp has no public abort: ``close()`` waits for the peer's close frame (up to ``ws_close``).
    Closing the private ``ws._response`` drops the TCP connection at once; it is what aiohttp's
    own heartbeat does on a missing pong. Pinned by tests/e2e/test_client_aiohttp_contract.py.
    """
    if not ws.closed:
        try:
            ws._response.close()
        except Exception:
            pass
