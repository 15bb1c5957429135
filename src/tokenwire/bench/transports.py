"""One generation over WebSocket, SSE or HTTP polling, timed by the client.

Every transport measures the same things the same way: ``t0`` just before the
request is written, the arrival of the first answer token, of each token, and
of the end. Connections are reused across runs (a WebSocket per model, an HTTP
keep-alive pool), as a real client would: reusing the connection is exactly
what the seeds credit WebSocket with, so SSE gets the same courtesy.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

__all__ = ["Sample", "Transport", "make_transport"]

PROMPT = "Explain in one paragraph why streaming chat tokens over a WebSocket helps users."


@dataclass(slots=True)
class Sample:
    """Client-side timing of one generation (seconds, from the request write)."""

    ttft: float | None = None
    total: float | None = None  #: until the last token
    last_token: float | None = None
    first_token: float | None = None
    tokens: int = 0
    error: str | None = None
    text: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float | None:
        if self.tokens < 2 or self.first_token is None or self.last_token is None:
            return None
        span = self.last_token - self.first_token
        return (self.tokens - 1) / span if span > 0 else None

    def token(self, content: str, at: float) -> None:
        """An answer token arrived ``at`` seconds after the request."""
        if self.first_token is None:
            self.first_token = self.ttft = at
        self.last_token = at
        self.tokens += 1
        self.text.append(content)

    def event(self, event: dict[str, Any], at: float) -> bool:
        """Record one protocol-v1 event (WebSocket frame or poll entry); True once it is the end."""
        kind = event.get("type")
        if kind == "token":
            self.token(event["content"], at)
        elif kind == "error":
            self.error = event.get("code") or "error"
        elif kind == "end":
            if event.get("status") != "completed" and self.error is None:
                self.error = event.get("status")
            return True
        return False


def _body(model: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


class Transport:
    name = "?"

    def __init__(self, http_url: str, ws_url: str, session: aiohttp.ClientSession) -> None:
        self.http = http_url.rstrip("/")
        self.ws_url = ws_url
        self.session = session

    async def generate(self, model: str, max_tokens: int) -> Sample:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class WSTransport(Transport):
    """Protocol v1 frames on one long-lived socket per model."""

    name = "ws"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self.n = 0

    async def generate(self, model: str, max_tokens: int) -> Sample:
        ws = self.sockets.get(model)
        if ws is None or ws.closed:
            ws = self.sockets[model] = await self.session.ws_connect(self.ws_url, autoping=True)
        self.n += 1
        gid = f"b{self.n}"
        frame = {
            "type": "chat",
            "id": gid,
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "params": {"max_tokens": max_tokens},
        }
        s = Sample()
        t0 = time.perf_counter()
        await ws.send_str(orjson.dumps(frame).decode())
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                s.error = f"socket {msg.type.name.lower()}"
                break
            event = orjson.loads(msg.data)
            if s.event(event, time.perf_counter() - t0):
                s.total = s.last_token
                break
        else:
            s.error = s.error or "socket closed"
        return s

    async def aclose(self) -> None:
        for ws in self.sockets.values():
            await ws.close()


class SSETransport(Transport):
    """OpenAI's ``POST /v1/chat/completions`` with ``stream: true`` (keep-alive pool)."""

    name = "sse"

    async def generate(self, model: str, max_tokens: int) -> Sample:
        s = Sample()
        t0 = time.perf_counter()
        async with self.session.post(self.http + "/v1/chat/completions", json=_body(model, max_tokens, True)) as resp:
            if resp.status != 200:
                s.error = f"http {resp.status}"
                return s
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    break
                chunk = orjson.loads(data)
                if "error" in chunk:
                    s.error = str(chunk["error"].get("code") or "error")
                    continue
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        s.token(content, time.perf_counter() - t0)
        s.total = s.last_token
        return s


class PollTransport(Transport):
    """``POST /v1/poll/start`` then ``GET /v1/poll/{id}?after=N`` every ``interval`` s (0 = long polling)."""

    name = "poll"

    def __init__(self, *args: Any, interval: float = 0.1) -> None:
        super().__init__(*args)
        self.interval = interval

    async def generate(self, model: str, max_tokens: int) -> Sample:
        s = Sample()
        t0 = time.perf_counter()
        async with self.session.post(self.http + "/v1/poll/start", json=_body(model, max_tokens, False)) as resp:
            if resp.status != 200:
                s.error = f"http {resp.status}"
                return s
            sid = (await resp.json(loads=orjson.loads))["id"]
        after = -1
        wait = "&wait=10" if self.interval <= 0 else ""
        while True:
            async with self.session.get(f"{self.http}/v1/poll/{sid}?after={after}{wait}") as resp:
                if resp.status != 200:
                    s.error = f"http {resp.status}"
                    return s
                body = orjson.loads(await resp.read())
            now = time.perf_counter() - t0
            for event in body["events"]:
                s.event(event, now)
            after = body["next_after"]
            if body["done"]:
                break
            if self.interval > 0:
                await asyncio.sleep(self.interval)
        s.total = s.last_token
        return s


def make_transport(name: str, http_url: str, ws_url: str, session: aiohttp.ClientSession, **kw: Any) -> Transport:
    if name == "ws":
        return WSTransport(http_url, ws_url, session)
    if name == "sse":
        return SSETransport(http_url, ws_url, session)
    if name == "poll":
        return PollTransport(http_url, ws_url, session, interval=kw.get("poll_interval", 0.1))
    raise ValueError(f"unknown transport {name!r} (known: ws, sse, poll)")
