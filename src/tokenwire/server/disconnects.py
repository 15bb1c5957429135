"""Cancel a generation whose HTTP client went away, on every HTTP entry path.

A streamed (SSE) response notices a gone client at its next write, but a
non-streamed request writes nothing until the reply is whole, and an SSE
response waiting for a slow provider's first token writes nothing either: both
would run (and bill) to the end for nobody. One task per process looks at the
transport of every such request every ``interval`` seconds and cancels the run
of a request whose connection is closed (within ~50 ms, as nginx does by
default). No timer or task per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web

__all__ = ["DisconnectWatch"]

log = logging.getLogger("tokenwire.http")


class DisconnectWatch:
    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.waiting: dict[int, tuple[web.Request, Any]] = {}
        self.cancelled = 0  #: runs cancelled because their client left (for tests and metrics)
        self._task: asyncio.Task[None] | None = None

    async def wait(self, request: web.Request, run: Any) -> bool:
        """Wait for ``run`` to end; False if it was cancelled because the client left first."""
        key = id(request)
        self.waiting[key] = (request, run)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._sweep(), name="tokenwire-disconnects")
        try:
            await run.ended.wait()
        finally:
            self.waiting.pop(key, None)
        return run.cancel_reason != "client_gone"

    async def _sweep(self) -> None:
        while self.waiting:
            await asyncio.sleep(self.interval)
            for request, run in list(self.waiting.values()):
                transport = request.transport
                if transport is None or transport.is_closing():
                    self.cancelled += 1
                    run.cancel("client_gone")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
