"""The SSE fast path on a real aiohttp StreamResponse: chunks written straight to the transport.

It fails when aiohttp's response writer changes shape (the fast path is then off: every event
takes StreamResponse.write, slower per token) or when what reaches the client is not the
events in order, chunk-framed, with the body ended properly.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tokenwire.protocol.events import END, TOKEN
from tokenwire.server import streaming
from tokenwire.server.streaming import WRITE_BUFFER_LIMIT, SSEResponder


class Lines:
    """An encoder: each token as one SSE event."""

    def encode(self, rest: bytes, kind: int, value: Any) -> bytes | None:
        if kind == TOKEN:
            return b"data: " + value.encode() + b"\n\n"
        if kind == END:
            return b"data: [DONE]\n\n"
        return None


async def serve(tokens: list[str], seen: dict[str, Any], hide_writer: bool = False) -> tuple[web.AppRunner, int]:
    async def handler(request: web.Request) -> web.StreamResponse:
        sse = SSEResponder(request, Lines())
        waits = 0
        for i, t in enumerate(tokens):
            wait = sse.send(b"", TOKEN, t)
            if i == 0 and wait is not None:
                await wait  # the first event opens the response
                if hide_writer:
                    sse._fast = streaming._chunk_transport(_Opaque(sse.resp), request)
                seen["fast"] = sse._fast is not None
            elif wait is not None:
                waits += 1
                await wait
        wait = sse.send(b"", END, {})
        if wait is not None:
            await wait
        seen["waits"] = waits
        assert sse.resp is not None
        await sse.resp.write_eof()
        return sse.resp

    app = web.Application()
    app.router.add_get("/sse", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


class _Opaque:
    """A response whose private writer is gone (what a later aiohttp might look like)."""

    def __init__(self, resp: Any) -> None:
        self._resp = resp


async def fetch(port: int) -> tuple[dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/sse") as r:
        assert r.status == 200
        return dict(r.headers), await r.read()


@pytest.mark.parametrize("hide", [False, True], ids=["fast-path", "fallback"])
async def test_events_arrive_whole_and_in_order(hide: bool) -> None:
    tokens = [f"t{i}" for i in range(500)] + ["ünïcode ✓", "x" * 70_000]
    seen: dict[str, Any] = {}
    runner, port = await serve(tokens, seen, hide_writer=hide)
    try:
        headers, body = await fetch(port)
    finally:
        await runner.cleanup()
    assert seen["fast"] is (not hide), "aiohttp's response writer changed shape: every event takes resp.write"
    assert headers["Content-Type"].startswith("text/event-stream") and headers["Transfer-Encoding"] == "chunked"
    events = [e[6:].decode() for e in body.split(b"\n\n") if e]
    assert events == [*tokens, "[DONE]"]


async def test_the_fast_path_waits_only_past_the_buffer_limit() -> None:
    big = "y" * 60_000
    tokens = [big] * (48 * WRITE_BUFFER_LIMIT // len(big))  # 12 MiB: past what the kernel buffers
    seen: dict[str, Any] = {}
    runner, port = await serve(tokens, seen)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        # a client that reads nothing for a while: the server's buffer fills, and it waits
        await asyncio.sleep(0.3)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert chunk, "connection closed before the last chunk"
            data += chunk
        writer.close()
    finally:
        await runner.cleanup()
    assert seen["fast"] is True and seen["waits"] >= 1
    assert data.count(big.encode()) == len(tokens)
