"""``ClientPool``: a bounded set of client sockets for services that fan requests out.

Each pooled client serves one request at a time; callers beyond ``max_size`` wait in
FIFO order (a freed client goes straight to the oldest waiter), with a time-out. A
client goes back to the pool only when its reply has ended (the seed returned it in a
``finally`` while the stream was still running). Broken clients are closed and their
slot handed on; idle ones are closed down to ``min_size``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from .core import DEFAULT_URL, AsyncClient, Completion, TokenStream
from .errors import AuthError, ConnectionLostError, PoolTimeoutError, TokenwireError

__all__ = ["ClientPool", "PooledStream"]

_BROKEN = (ConnectionLostError, AuthError)


class ClientPool:
    """``async with ClientPool(url, max_size=10) as pool: await pool.complete("Hi")``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        min_size: int = 2,
        max_size: int = 10,
        idle_timeout: float = 60.0,
        acquire_timeout: float = 30.0,
        **client_kwargs: Any,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError("need 0 <= min_size <= max_size and max_size >= 1")
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.acquire_timeout = acquire_timeout
        self._client_kwargs = client_kwargs
        self._idle: deque[tuple[AsyncClient, float]] = deque()
        self._waiters: deque[asyncio.Future[AsyncClient | None]] = deque()
        self._size = 0  # open clients plus those being opened
        self._active = 0
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self.peak_size = 0
        self._requests = 0
        self._errors = 0
        self._connect_ms: list[float] = []

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Open ``min_size`` connections and start the idle reaper."""
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        need = self.min_size - self._size
        if need > 0:
            self._size += need
            self._note_size()
            clients = await asyncio.gather(*(self._new() for _ in range(need)), return_exceptions=True)
            for c in clients:
                if isinstance(c, AsyncClient):
                    self._put(c, False, was_active=False)

    async def __aenter__(self) -> ClientPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection; waiters get PoolTimeoutError."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_exception(PoolTimeoutError("pool_closed", "the pool was closed", retryable=False))
        idle = [c for c, _ in self._idle]
        self._idle.clear()
        self._size -= len(idle)
        await asyncio.gather(*(c.close() for c in idle), return_exceptions=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    @property
    def metrics(self) -> dict[str, Any]:
        """requests, active, idle, waiting, errors, size, peak_size, mean_connect_ms."""
        ms = self._connect_ms
        return {
            "requests": self._requests,
            "active": self._active,
            "idle": len(self._idle),
            "waiting": sum(1 for w in self._waiters if not w.done()),
            "errors": self._errors,
            "size": self._size,
            "peak_size": self.peak_size,
            "connects": len(ms),
            "mean_connect_ms": round(sum(ms) / len(ms), 2) if ms else None,
        }

    # -- requests -----------------------------------------------------------------------
    def acquire(self) -> _Lease:
        """``async with pool.acquire() as client:`` — exclusive use until the block ends."""
        return _Lease(self)

    def stream(self, prompt: str | Sequence[Mapping[str, Any]], **kwargs: Any) -> PooledStream:
        """Like ``AsyncClient.stream``; the connection is returned when the reply has ended."""
        return PooledStream(self, prompt, kwargs)

    async def complete(self, prompt: str | Sequence[Mapping[str, Any]], **kwargs: Any) -> Completion:
        async with self.acquire() as client:
            return await client.complete(prompt, **kwargs)

    # -- internals ------------------------------------------------------------------------
    def _note_size(self) -> None:
        if self._size > self.peak_size:
            self.peak_size = self._size

    async def _get(self) -> AsyncClient:
        self._requests += 1
        if self._closed:
            raise PoolTimeoutError("pool_closed", "the pool is closed", retryable=False)
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        if not self._waiters:  # nobody queued before us: FIFO allows taking a free one
            while self._idle:
                client, _ = self._idle.pop()  # the most recently used: warmest
                if client.closed:
                    self._size -= 1
                    continue
                self._active += 1
                return client
            if self._size < self.max_size:
                self._size += 1
                self._note_size()
                return await self._open_slot()
        fut: asyncio.Future[AsyncClient | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self.acquire_timeout):
                got = await fut
        except (TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._hand_back(fut.result())  # handed over just as we gave up
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass
            if isinstance(exc, TimeoutError):
                self._errors += 1
                raise PoolTimeoutError(
                    "pool_timeout", f"no connection free within {self.acquire_timeout:g} s (max_size {self.max_size})"
                ) from None
            raise
        if got is None:  # a slot was freed for us: open a new connection in it
            return await self._open_slot()
        self._active += 1
        return got

    async def _open_slot(self) -> AsyncClient:
        try:
            client = await self._new()
        except BaseException:
            self._errors += 1
            self._size -= 1
            self._free_slot()
            raise
        self._active += 1
        return client

    async def _new(self) -> AsyncClient:
        client = AsyncClient(self.url, **self._client_kwargs)
        try:
            await client.connect()
        except BaseException:
            await client.close()
            raise
        self._connect_ms.extend(client.connect_ms[-1:])
        return client

    def _free_slot(self) -> None:
        """A slot became free: let the oldest waiter open a connection in it."""
        while self._waiters and self._size < self.max_size:
            w = self._waiters.popleft()
            if not w.done():
                self._size += 1
                self._note_size()
                w.set_result(None)
                return

    def _hand_back(self, client: AsyncClient | None) -> None:
        if client is None:
            self._size -= 1
            self._free_slot()
        else:
            self._active += 1  # _put undoes it
            self._put(client, False)

    def _put(self, client: AsyncClient, broken: bool, was_active: bool = True) -> None:
        if was_active:
            self._active -= 1
        if broken or client.closed or self._closed:
            self._size -= 1
            self._discard(client)
            self._free_slot()
            return
        while self._waiters:  # FIFO: the oldest waiter gets it, directly
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(client)
                return
        self._idle.append((client, time.monotonic()))

    def _discard(self, client: AsyncClient) -> None:
        if client.closed:
            return
        task = asyncio.get_running_loop().create_task(client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _reap(self) -> None:
        period = max(0.05, min(self.idle_timeout / 4, 5.0))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            while self._idle and self._size > self.min_size and now - self._idle[0][1] >= self.idle_timeout:
                client, _ = self._idle.popleft()
                self._size -= 1
                self._discard(client)
            for client, t in list(self._idle):
                if client.closed:
                    self._idle.remove((client, t))
                    self._size -= 1


class _Lease:
    __slots__ = ("client", "pool")

    def __init__(self, pool: ClientPool) -> None:
        self.pool = pool
        self.client: AsyncClient | None = None

    async def __aenter__(self) -> AsyncClient:
        self.client = await self.pool._get()
        return self.client

    async def __aexit__(self, et: object, exc: BaseException | None, tb: object) -> None:
        client = self.client
        if client is None:
            return
        self.client = None
        for st in list(client._streams.values()):  # never hand on a socket mid-reply
            await st.close()
        self.pool._put(client, isinstance(exc, _BROKEN))


class PooledStream:
    """A pooled ``stream()``: acquires on first iteration, releases when the reply ends."""

    def __init__(self, pool: ClientPool, prompt: str | Sequence[Mapping[str, Any]], kwargs: dict[str, Any]) -> None:
        self._pool = pool
        self._prompt = prompt
        self._kwargs = kwargs
        self._client: AsyncClient | None = None
        self._inner: TokenStream | None = None
        self._finished = False

    def __aiter__(self) -> PooledStream:
        return self

    async def __anext__(self) -> str:
        if self._inner is None:
            if self._finished:
                raise StopAsyncIteration
            self._client = await self._pool._get()
            self._inner = self._client.stream(self._prompt, **self._kwargs)
        try:
            return await self._inner.__anext__()
        except StopAsyncIteration:
            self._release(False)
            raise
        except TokenwireError as exc:
            self._release(isinstance(exc, _BROKEN))
            raise
        except asyncio.CancelledError:
            self._release(False)  # the inner stream already scheduled its cancel
            raise

    def _release(self, broken: bool) -> None:
        client = self._client
        self._finished = True
        if client is not None:
            self._client = None
            self._pool._put(client, broken)

    async def aclose(self) -> None:
        if self._inner is not None and self._client is not None:
            await self._inner.aclose()
        self._release(False)

    async def __aenter__(self) -> PooledStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        client = self._client
        if client is not None and client._loop is not None and not client._loop.is_closed():
            self._client = None
            try:
                client._loop.call_soon_threadsafe(self._pool._put, client, False)
            except RuntimeError:
                pass

    @property
    def result(self) -> Completion:
        if self._inner is None:
            raise RuntimeError("the reply has not started")
        return self._inner.result
