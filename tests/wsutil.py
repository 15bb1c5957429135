"""A small WebSocket test client on aiohttp: send frames, collect events with time-outs."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson


class WS:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws
        #: events of other generations seen while waiting for one; until_end() drains them
        self.backlog: dict[str, list[dict[str, Any]]] = {}

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> WS:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, autoping=True, **kwargs)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    async def send(self, obj: Any) -> None:
        await self.ws.send_str(obj if isinstance(obj, str) else orjson.dumps(obj).decode())

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {msg.type} {msg.data!r} {msg.extra!r}")
        return orjson.loads(msg.data)

    async def until_end(self, id: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Events of generation ``id`` up to and including its ``end`` (others are kept)."""
        out: list[dict[str, Any]] = self.backlog.pop(id, [])
        if out and out[-1].get("type") == "end":
            return out
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.recv(max(0.01, deadline - loop.time()))
            if event.get("id") == id:
                out.append(event)
                if event.get("type") == "end":
                    return out
                if event.get("type") == "error" and not any(e.get("type") == "start" for e in out):
                    return out  # refused before it started: there will be no end
            elif event.get("id") is not None:
                self.backlog.setdefault(event["id"], []).append(event)

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()

    async def __aenter__(self) -> WS:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["content"] for e in events if e.get("type") == "token")


async def connect_worker(url: str) -> tuple[WS, str]:
    """A socket, and which ``serve --workers`` process took it (the upgrade's X-Tokenwire-Worker)."""
    seen: dict[str, str] = {}

    async def on_end(session: Any, ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        seen["worker"] = params.response.headers.get("X-Tokenwire-Worker", "")

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    session = aiohttp.ClientSession(trace_configs=[trace])
    ws = await session.ws_connect(url)
    return WS(session, ws), seen["worker"]
