"""``Client``: a blocking wrapper for scripts and the terminal chat.

The :class:`AsyncClient` runs on a private event loop in a daemon thread. Tokens are
handed over through the stream's own buffer and a ``threading.Event`` (no task or
future per token), so flow control and resume work exactly as in async code.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from .core import DEFAULT_URL, AsyncClient, Completion, TokenStream

__all__ = ["Client", "SyncConversation", "SyncTokenStream"]

T = TypeVar("T")


class Client:
    """``with Client(url) as c: for token in c.stream("Hi"): …`` — same options as AsyncClient."""

    def __init__(self, url: str = DEFAULT_URL, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tokenwire-client", daemon=True)
        self._thread.start()
        self.aclient = AsyncClient(url, **kwargs)
        self._closed = False

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()  # Ctrl-C / timeout: stop the coroutine too (cancels its generation)
            raise

    def connect(self) -> None:
        self._call(self.aclient.connect())

    def stream(self, prompt: str | Sequence[Mapping[str, Any]], **kwargs: Any) -> SyncTokenStream:
        """Iterate a reply's tokens; ``close()`` (or leaving a ``with``) cancels it."""
        return SyncTokenStream(self, self.aclient.stream(prompt, **kwargs))

    def complete(self, prompt: str | Sequence[Mapping[str, Any]], **kwargs: Any) -> Completion:
        return self._call(self.aclient.complete(prompt, **kwargs))

    def conversation(
        self, system: str | None = None, *, conversation_id: str | None = None, model: str | None = None
    ) -> SyncConversation:
        return SyncConversation(self, system, conversation_id, model)

    @property
    def stats(self) -> dict[str, Any]:
        return self.aclient.stats

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self.aclient.close(), timeout=10)
            # the loop's resolver thread (getaddrinfo) must not outlive the client
            self._call(self._loop.shutdown_default_executor(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncTokenStream:
    """A blocking iterator of tokens (the sync face of :class:`TokenStream`)."""

    def __init__(self, owner: Client, stream: TokenStream) -> None:
        self._owner = owner
        self._stream = stream
        self._s = stream._s
        self._s.sync_event = threading.Event()
        self._started = False

    def __iter__(self) -> SyncTokenStream:
        return self

    def __next__(self) -> str:
        st = self._s
        owner = self._owner
        if not self._started:
            self._started = True
            owner._call(owner.aclient._start(st))
        q = st.items
        loop = owner._loop
        client = owner.aclient
        event = st.sync_event
        assert event is not None
        while True:
            item = st.take()
            if item is not None:
                if st.space is not None:
                    loop.call_soon_threadsafe(st.make_room)
                resume = st.consumed()
                if resume is not None:
                    loop.call_soon_threadsafe(client._spawn, client._resume(st, resume))
                if st.keep(*item):
                    return item[1]
                continue
            if st.error is not None:
                st.closed = True
                raise st.error
            if st.done or st.closed:
                raise StopIteration
            event.clear()
            if q or st.done or st.error is not None:
                continue
            event.wait(0.5)  # a timed wait keeps Ctrl-C responsive

    def close(self) -> None:
        """Stop reading; cancels the generation on the server if it is still running."""
        self._owner._call(self._stream.aclose(), timeout=10)

    def __enter__(self) -> SyncTokenStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def result(self) -> Completion:
        return self._stream.result

    @property
    def stats(self) -> dict[str, int]:
        return self._stream.stats


class SyncConversation:
    """Blocking multi-turn helper around one ``conversation_id``."""

    def __init__(self, owner: Client, system: str | None, conversation_id: str | None, model: str | None) -> None:
        self._conv = owner.aclient.conversation(system, conversation_id=conversation_id, model=model)
        self._owner = owner

    @property
    def id(self) -> str:
        return self._conv.id

    def stream(self, content: str, **kwargs: Any) -> SyncTokenStream:
        return SyncTokenStream(self._owner, self._conv.stream(content, **kwargs))

    def complete(self, content: str, **kwargs: Any) -> Completion:
        return self._owner._call(self._conv.complete(content, **kwargs))
