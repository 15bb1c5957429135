"""Sockets that speak another dialect than protocol v1 are still the gateway's sockets.

``GET /v1/responses`` upgraded (the Responses API's WebSocket mode) is served by the same session
and socket owner as ``/ws/chat``: it is counted in ``tokenwire_open_sockets``, pinged and dropped
when silent, closed with 4001 by a drain, and its errors (a binary frame, the frame gate) are
Responses-shaped. A reader that stops reading is cut in its own dialect, there and on an AI SDK
``WebSocketChatTransport`` socket: never a protocol v1 frame on either.
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import openai
import orjson
import websockets
from eventually import aeventually
from rawws import Raw, frame, text
from test_metrics import g, scrape
from test_sse_slow_consumer import start_gateway as gateway

CREATE = {"type": "response.create", "model": "gpt-4.1", "input": "hello", "max_output_tokens": 5}


async def events_until_done(raw: Raw) -> list[dict]:
    out = []
    while not out or out[-1]["type"] not in ("response.completed", "response.failed", "response.incomplete"):
        out.append(await raw.recv_json())
    return out


async def test_counted_as_an_open_socket_and_its_errors_are_responses_shaped(spawn, tmp_path) -> None:
    gw = gateway(spawn, tmp_path)
    before = await scrape(gw)
    assert g(before, "tokenwire_open_sockets") == 0
    raw = await Raw.connect(gw.host, gw.port, path="/v1/responses")
    assert raw.status == 101
    during = await aeventually(
        lambda: _when(scrape(gw), lambda m: g(m, "tokenwire_open_sockets") == 1), timeout=10, message="counted"
    )
    assert g(during, "tokenwire_ws_connections_total") == g(before, "tokenwire_ws_connections_total") + 1

    await raw.send(frame(b"\x00\x01", opcode=2))  # a binary frame: refused in the dialect's shape
    err = await raw.recv_json()
    assert err["type"] == "error" and err["status"] == 400 and set(err["error"]) == {"type", "code", "message", "param"}
    assert "id" not in err  # not protocol v1's error event

    await raw.send(text(CREATE))  # the socket still serves
    events = await events_until_done(raw)
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))

    raw.close()
    await aeventually(
        lambda: _when(scrape(gw), lambda m: g(m, "tokenwire_open_sockets") == 0), timeout=10, message="uncounted"
    )


async def test_a_silent_socket_is_pinged_then_dropped(spawn, tmp_path) -> None:
    gw = gateway(spawn, tmp_path, ws_ping_interval=0.3)
    raw = await Raw.connect(gw.host, gw.port, path="/v1/responses")  # it never answers a ping
    op, _ = await raw.recv_frame(timeout=5)
    assert op == 0x9  # the gateway's ping
    t0 = time.monotonic()
    got = b""
    while chunk := await asyncio.wait_for(raw.reader.read(4096), 10):
        got += chunk
    assert time.monotonic() - t0 < 5  # dropped after two silent intervals (and a few loop passes)
    raw.close()


async def test_a_reader_that_stops_reading_is_cut_in_its_own_dialect(spawn, tmp_path) -> None:
    gw = gateway(spawn, tmp_path, slow_consumer_timeout=1.0)
    stalled = await Raw.connect(gw.host, gw.port, path="/v1/responses", rcvbuf=4096)
    assert stalled.status == 101
    await stalled.send(text({**CREATE, "model": "fast-1", "max_output_tokens": 400_000}))

    async def cut() -> dict | None:
        async with aiohttp.ClientSession() as s, s.get(gw.http + "/healthz") as r:
            health = await r.json()
        return health if health["generations"] == 0 else None

    await aeventually(cut, timeout=30, interval=0.2, message="the stalled response is cut")
    metrics = await scrape(gw)
    assert g(metrics, "tokenwire_slow_consumer_cutoffs_total") == 1
    # the reader wakes up: its stream ends with an error event in the Responses dialect
    seen = b""
    while b'"code":"slow_consumer"' not in seen:
        chunk = await asyncio.wait_for(stalled.reader.read(1 << 20), 10)
        assert chunk, "the socket closed before the error event"
        seen = seen[-(1 << 22) :] + chunk
    seen += await read_until_quiet(stalled)  # what follows it: at most the response's end
    error_at = seen.rindex(b'{"type":"error"')
    error = orjson.loads(seen[error_at : seen.index(b"}", error_at) + 1])
    assert error["code"] == "slow_consumer" and "read nothing" in error["message"]
    assert b'"type":"response.output_text.delta"' not in seen[error_at:]  # not one token after the cut
    after = seen[error_at:]
    if b'"type":"response.' in after:  # the end went out too (it fitted in the slack after the cut)
        last = after.rindex(b'{"type":"response.')  # the open item's closing events, then the response's end
        assert after[last:].startswith(b'{"type":"response.incomplete"') and b'"status":"cancelled"' in after[last:]
    assert b'"id":"responses:' not in seen and b'"type":"end"' not in seen
    stalled.close()
    assert "Traceback" not in gw.text()


async def test_a_drain_closes_an_open_responses_socket_with_4001(spawn, tmp_path) -> None:
    gw = gateway(spawn, tmp_path)
    async with openai.AsyncOpenAI(base_url=gw.http + "/v1", api_key="unused", max_retries=0, timeout=20) as c:
        async with c.responses.connect() as conn:
            await conn.response.create(model="gpt-4.1", input="before the drain", max_output_tokens=3)
            async for ev in conn:
                if ev.type == "response.completed":
                    break
            gw.popen.send_signal(signal.SIGTERM)
            closed = await aeventually(
                lambda: _closed(conn), timeout=15, interval=0.05, message="the drain closes the socket"
            )
    assert closed == 4001


async def test_an_ai_sdk_socket_that_stops_reading_is_cut_in_its_own_dialect(spawn, tmp_path) -> None:
    gw = gateway(spawn, tmp_path, slow_consumer_timeout=1.0)
    stalled = await Raw.connect(gw.host, gw.port, path="/ws/chat", rcvbuf=4096)
    assert stalled.status == 101
    send = {
        "type": "send",
        "requestId": "r1",
        "id": "chat-1",
        "trigger": "submit-message",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "x"}]}],
        "body": {"model": "fast-1", "maxOutputTokens": 400_000},
    }
    await stalled.send(text(send))

    async def cut() -> dict | None:
        async with aiohttp.ClientSession() as s, s.get(gw.http + "/healthz") as r:
            health = await r.json()
        return health if health["generations"] == 0 else None

    await aeventually(cut, timeout=30, interval=0.2, message="the stalled request is cut")
    seen = b""
    while b'{"type":"end","requestId":"r1"}' not in seen:
        chunk = await asyncio.wait_for(stalled.reader.read(1 << 20), 10)
        assert chunk, "the socket closed before the request's end"
        seen = seen[-(1 << 20) :] + chunk
    error_at = seen.rindex(b'"chunk":{"type":"error"')
    assert b"read nothing" in seen[error_at : error_at + 300]
    assert b'"type":"text-delta"' not in seen[error_at:]  # not one token after the cut
    seen += await read_until_quiet(stalled)
    assert seen.count(b'{"type":"end","requestId":"r1"}') == 1
    assert seen.endswith(b'{"type":"end","requestId":"r1"}')  # nothing after the request's end
    assert b'"code":"slow_consumer"' not in seen  # protocol v1's error event never reaches this socket
    stalled.close()
    assert "Traceback" not in gw.text()


async def test_an_ai_sdk_socket_s_refused_frames_are_answered_in_its_own_dialect(spawn, tmp_path) -> None:
    """The frame-rate gate answers each dropped ``send`` with an ``error`` for its ``requestId``.

    A protocol v1 error frame (no ``requestId``) would make the AI SDK's transport throw and fail
    every request on the socket; these fail only the dropped ones.
    """
    gw = gateway(spawn, tmp_path, max_frames_per_second=2)
    raw = await Raw.connect(gw.host, gw.port, path="/ws/chat")
    assert raw.status == 101
    ids = [f"r{i}" for i in range(6)]
    for rid in ids:  # at once: the first two pass the gate, the rest are dropped
        send = {
            "type": "send",
            "requestId": rid,
            "id": "chat-" + rid,
            "trigger": "submit-message",
            "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": rid}]}],
            "body": {"model": "gpt-4.1", "maxOutputTokens": 3},
        }
        await raw.send(text(send))
    outcome: dict[str, dict] = {}
    while len(outcome) < len(ids):
        reply = await raw.recv_json()
        assert isinstance(reply.get("requestId"), str), reply  # every frame names its request
        if reply["type"] in ("end", "error"):
            outcome.setdefault(reply["requestId"], reply)
    assert [outcome[r]["type"] for r in ids] == ["end", "end", "error", "error", "error", "error"]
    assert all("frames per second" in outcome[r]["errorText"] for r in ids[2:])
    raw.close()


async def _closed(conn) -> int | None:
    """The close code the server sent, once the SDK's connection sees the close (None before)."""
    try:
        await asyncio.wait_for(conn.recv(), 0.05)
    except TimeoutError:
        return None
    except websockets.exceptions.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else -1
    return None


async def read_until_quiet(raw: Raw, quiet: float = 1.0) -> bytes:
    """Whatever the server still sends, up to EOF or ``quiet`` seconds without a byte."""
    got = b""
    try:
        while chunk := await asyncio.wait_for(raw.reader.read(1 << 20), quiet):
            got += chunk
    except TimeoutError:
        pass
    return got


async def _when(coro, ok):
    value = await coro
    return value if ok(value) else None
