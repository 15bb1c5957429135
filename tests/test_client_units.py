"""Client units: backoff/jitter bounds, error mapping, handshake and close-code handling
(against small in-process WebSocket servers that misbehave on purpose)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from aiohttp import web

import tokenwire
from tokenwire.client import backoff_delay, error_from_event
from tokenwire.client.errors import (
    AuthError,
    BadRequestError,
    ConnectionLostError,
    ConversationBusyError,
    RateLimitError,
    ServerError,
    StreamExpiredError,
    UpstreamError,
)


def test_backoff_full_jitter_bounds() -> None:
    rng = random.Random(7)
    for attempt in range(10):
        bound = min(30.0, 1.0 * 2**attempt)
        samples = [backoff_delay(attempt, 1.0, 30.0, rng.uniform) for _ in range(2000)]
        assert all(0.0 <= s <= bound for s in samples), attempt
        # full jitter spreads over the whole range, not near the bound only
        assert min(samples) < 0.05 * bound and max(samples) > 0.95 * bound
        assert 0.4 * bound < sum(samples) / len(samples) < 0.6 * bound
    assert backoff_delay(0, 1.0, 30.0, lambda a, b: b) == 1.0
    assert backoff_delay(3, 1.0, 30.0, lambda a, b: b) == 8.0
    assert backoff_delay(10, 1.0, 30.0, lambda a, b: b) == 30.0  # capped
    assert backoff_delay(2, 0.5, 30.0, lambda a, b: a) == 0.0


@pytest.mark.parametrize(
    ("code", "cls", "retryable"),
    [
        ("unauthorized", AuthError, False),
        ("forbidden", AuthError, False),
        ("rate_limited", RateLimitError, True),
        ("upstream_rate_limited", RateLimitError, True),
        ("upstream_error", UpstreamError, True),
        ("upstream_timeout", UpstreamError, True),
        ("upstream_auth", UpstreamError, False),
        ("upstream_bad_request", BadRequestError, False),
        ("unknown_model", BadRequestError, False),
        ("bad_request", BadRequestError, False),
        ("conversation_busy", ConversationBusyError, True),
        ("stream_expired", StreamExpiredError, False),
        ("internal_error", ServerError, False),
        ("something_new", ServerError, False),
    ],
)
def test_error_mapping(code: str, cls: type, retryable: bool) -> None:
    event = {"type": "error", "id": "r1", "code": code, "message": f"msg {code}", "retryable": retryable}
    err = error_from_event(event)
    assert type(err) is cls
    assert isinstance(err, tokenwire.TokenwireError)
    assert (err.code, err.message, err.retryable) == (code, f"msg {code}", retryable)
    assert err.details["id"] == "r1"


def test_error_mapping_keeps_retry_after_and_defaults() -> None:
    event = {"type": "error", "code": "upstream_rate_limited", "message": "slow down", "retry_after": 1.5}
    err = error_from_event(event)
    assert isinstance(err, RateLimitError) and err.retry_after == 1.5 and err.retryable  # class default
    assert ConnectionLostError("connection_lost", "x").retryable


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
