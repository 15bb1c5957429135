"""The client's handshake and close-code handling against small in-process WebSocket servers that
misbehave on purpose (real sockets). (Backoff and error mapping: unit/test_client_units.py.)"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

import tokenwire
from tokenwire.client.errors import (
    AuthError,
    ConnectionLostError,
    StreamExpiredError,
)


async def _fake_server(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/ws/chat", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"ws://127.0.0.1:{runner.addresses[0][1]}/ws/chat"


@pytest.mark.parametrize("status", [401, 403])
async def test_handshake_auth_refusal_is_final(status: int) -> None:
    hits = 0

    async def refuse(request: web.Request) -> web.StreamResponse:
        nonlocal hits
        hits += 1
        assert request.headers.get("Authorization") == "Bearer tw-secret"
        raise web.HTTPUnauthorized() if status == 401 else web.HTTPForbidden()

    runner, url = await _fake_server(refuse)
    try:
        client = tokenwire.AsyncClient(url, api_key="tw-secret", backoff_base=0.01, max_attempts=5)
        with pytest.raises(AuthError) as info:
            async with asyncio.timeout(5):
                await client.__aenter__()
        assert info.value.retryable is False
        assert hits == 1  # not retried
        assert client.closed
    finally:
        await runner.cleanup()


async def test_connect_failure_retries_with_backoff_then_raises() -> None:
    hits = 0

    async def unavailable(request: web.Request) -> web.StreamResponse:
        nonlocal hits
        hits += 1
        raise web.HTTPServiceUnavailable()

    runner, url = await _fake_server(unavailable)
    try:
        client = tokenwire.AsyncClient(url, backoff_base=0.01, max_attempts=4)
        with pytest.raises(ConnectionLostError) as info:
            async with asyncio.timeout(5):
                await client.connect()
        assert hits == 4 and "4 attempt" in info.value.message
        await client.close()
    finally:
        await runner.cleanup()


async def _serve_then_close(code: int, sockets: list[web.WebSocketResponse], chats: list[dict]):
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.append(ws)
        async for msg in ws:
            frame = msg.json()
            chats.append(frame)
            if frame["type"] == "chat":
                await ws.send_json({"type": "start", "id": frame["id"], "seq": 0, "stream_id": frame["stream_id"]})
                await ws.send_json({"type": "token", "id": frame["id"], "seq": 1, "content": "a"})
                await ws.close(code=code, message=b"bye")
            elif frame["type"] == "attach":
                i = frame["id"]
                assert frame["last_seq"] == 1
                await ws.send_json({"type": "token", "id": i, "seq": 2, "content": "b"})
                await ws.send_json({"type": "end", "id": i, "seq": 3, "status": "completed", "finish_reason": "stop"})
        return ws

    return await _fake_server(handler)


async def test_close_4003_is_final_auth_error() -> None:
    sockets: list = []
    frames: list[dict] = []
    runner, url = await _serve_then_close(4003, sockets, frames)
    try:
        async with tokenwire.AsyncClient(url, backoff_base=0.01) as client:
            got: list[str] = []
            with pytest.raises(AuthError):
                async with asyncio.timeout(5):
                    async for t in client.stream("x"):
                        got.append(t)
            assert got == ["a"]
            assert len(sockets) == 1 and client.stats["reconnects"] == 0
    finally:
        await runner.cleanup()


async def test_close_4001_reconnects_at_once_and_resumes() -> None:
    sockets: list = []
    frames: list[dict] = []
    runner, url = await _serve_then_close(4001, sockets, frames)
    try:
        # a huge backoff base: only an immediate (undelayed) reconnect finishes in time
        async with tokenwire.AsyncClient(url, backoff_base=60.0) as client:
            t0 = time.monotonic()
            async with asyncio.timeout(5):
                got = [t async for t in client.stream("x")]
            assert got == ["a", "b"]
            assert time.monotonic() - t0 < 2.0
            assert client.stats["reconnects"] == 1 and len(sockets) == 2
            assert [f["type"] for f in frames] == ["chat", "attach"]
            assert frames[1]["stream_id"] == frames[0]["stream_id"]
    finally:
        await runner.cleanup()


async def test_duplicate_and_gap_handling() -> None:
    """Events already seen are dropped (exactly once); a gap is an error, never silent."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            frame = msg.json()
            i = frame["id"]
            if frame["type"] != "chat":
                continue
            await ws.send_json({"type": "start", "id": i, "seq": 0})
            await ws.send_json({"type": "token", "id": i, "seq": 1, "content": "a"})
            await ws.send_json({"type": "token", "id": i, "seq": 1, "content": "a"})  # duplicate
            await ws.send_json({"type": "token", "id": i, "seq": 2, "content": "b"})
            if frame["messages"][0]["content"] == "gap":
                await ws.send_json({"type": "token", "id": i, "seq": 4, "content": "d"})
            else:
                await ws.send_json({"type": "end", "id": i, "seq": 3, "status": "completed"})
        return ws

    runner, url = await _fake_server(handler)
    try:
        async with tokenwire.AsyncClient(url) as client:
            async with asyncio.timeout(5):
                assert [t async for t in client.stream("ok")] == ["a", "b"]
                got: list[str] = []
                with pytest.raises(StreamExpiredError):
                    async for t in client.stream("gap"):
                        got.append(t)
                assert got == ["a", "b"]
    finally:
        await runner.cleanup()
