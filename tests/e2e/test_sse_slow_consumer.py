"""An SSE client that stops reading is cut off (``slow_consumer``) as a WebSocket's is: its
generation is cancelled, and what it finds when it wakes is the error in its own dialect.
The AI SDK's reply and a background response outlive their client (that is what resume is for):
their stalled reader is cut the same way, but the reply goes on, and a reconnect gets all of it."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import orjson
import pytest
from eventually import aeventually

MESSAGES = [{"role": "user", "content": "x"}]
#: dialect -> (path, a streamed request for a 400,000-token reply, what its error event says)
REQUESTS = {
    "openai": (
        "/v1/chat/completions",
        {"model": "fast-1", "messages": MESSAGES, "max_tokens": 400_000, "stream": True},
        b'"code":"slow_consumer"',
    ),
    "anthropic": (
        "/v1/messages",
        {"model": "fast-1", "messages": MESSAGES, "max_tokens": 400_000, "stream": True},
        b'"type":"error"',
    ),
    "responses": (
        "/v1/responses",
        {"model": "fast-1", "input": "x", "max_output_tokens": 400_000, "stream": True, "store": False},
        b'"code":"slow_consumer"',
    ),
}


def start_gateway(spawn, tmp_path, **server: float):
    """A gateway in front of the fast fake upstream (``fast-*``) and the simulator (``gpt-4.1``).

    ``server``: its ``[server]`` settings; by default it cuts a reader stalled for 1 s.
    """
    fast = spawn("simulate", "--port", "0", "--fast")
    settings = "\n".join(f"{k} = {v}" for k, v in {"slow_consumer_timeout": 1.0, **server}.items())
    config = tmp_path / "tokenwire.toml"
    config.write_text(
        f"""
[server]
{settings}
[providers.simulated]
preset = "simulated"
models = ["gpt-4.1"]
[providers.fast]
kind = "openai"
base_url = "{fast.http}/v1"
api_key = "sk-fast-upstream-key"
models = ["fast-*"]
"""
    )
    return spawn("serve", "--port", "0", "--config", str(config), env={"TOKENWIRE_DB": ":memory:"})


async def stalled_post(gw, path: str, body: dict) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """POST ``body`` from a client with a 4 KiB receive buffer that then reads nothing."""
    payload = orjson.dumps(body)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (gw.host, gw.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    writer.write(
        b"POST %b HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
        % (path.encode(), gw.host.encode(), len(payload), payload)
    )
    await writer.drain()
    return reader, writer


async def metrics_text(session: aiohttp.ClientSession, gw) -> str:
    async with session.get(gw.http + "/metrics") as r:
        return await r.text()


async def metrics_once_cut(session: aiohttp.ClientSession, gw) -> str:
    """The gateway's /metrics, once it has cut one slow consumer."""

    async def cut() -> str | None:
        text = await metrics_text(session, gw)
        line = next(x for x in text.splitlines() if x.startswith("tokenwire_slow_consumer_cutoffs_total"))
        return text if line.split()[-1] == "1.0" else None

    return await aeventually(cut, timeout=30, interval=0.2, message="the stalled SSE stream is cut")


async def last_chunk_on_waking(reader: asyncio.StreamReader, head: list[bytes] | None = None) -> bytes:
    """Read what the stalled client was sent, to the close; the data of its last chunk (the body must end).

    ``head``, if given, gets the first bytes read (the response head and first events)."""
    seen = b""
    while True:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
        if not chunk:
            break
        if head is not None and not head:
            head.append(chunk)
        seen = seen[-8192:] + chunk
    assert seen.endswith(b"\r\n0\r\n\r\n"), seen[-300:]
    assert seen.count(b"read nothing") == 1  # one error, and no token after it: it is the last chunk
    return seen[: -len(b"\r\n0\r\n\r\n")].rsplit(b"\r\n", 1)[1]  # SSE lines end in LF, chunks in CRLF


@pytest.mark.parametrize("dialect", sorted(REQUESTS))
async def test_a_stalled_sse_reader_is_cut_and_finds_the_error_in_its_dialect(spawn, tmp_path, dialect) -> None:
    gw = start_gateway(spawn, tmp_path)
    path, body, marker = REQUESTS[dialect]
    reader, writer = await stalled_post(gw, path, body)
    t0 = time.monotonic()

    async with aiohttp.ClientSession() as session:
        await metrics_once_cut(session, gw)

        async def cancelled() -> bool:  # counted when the run ends, a moment after the cut
            return 'tokenwire_cancellations_total{reason="slow_consumer"} 1.0' in await metrics_text(session, gw)

        await aeventually(cancelled, timeout=10, interval=0.05, message="the cut run is counted as cancelled")
        took = time.monotonic() - t0

        async def idle() -> bool:
            async with session.get(gw.http + "/healthz") as r:
                return (await r.json())["generations"] == 0

        await aeventually(idle, timeout=10, interval=0.1, message="its generation is gone")

    # the reader wakes up: the stream ends with the error in its dialect, then the body's end
    last = await last_chunk_on_waking(reader)
    assert marker in last and b"read nothing for 1 s" in last, last
    print(f"\n{dialect}: stalled SSE reader cut {took:.1f} s after its request")
    writer.close()
    assert "Traceback" not in gw.text() and "sk-fast-upstream-key" not in gw.text()


async def test_a_stalled_ai_sdk_reader_is_cut_and_its_reply_goes_on_for_a_reconnect(spawn, tmp_path) -> None:
    gw = start_gateway(spawn, tmp_path)
    tokens = 200_000
    chat = {
        "id": "c-stalled",
        "model": "fast-1",
        "maxOutputTokens": tokens,
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "x"}]}],
    }
    reader, writer = await stalled_post(gw, "/api/chat", chat)

    async with aiohttp.ClientSession() as session:
        metrics = await metrics_once_cut(session, gw)
        assert 'reason="slow_consumer"' not in metrics  # the reply was not cancelled

        # the reader wakes up: the AI SDK's error chunk, saying the reply goes on, ends its stream
        last = await last_chunk_on_waking(reader)
        assert b'\ndata: {"type":"error","errorText":' in last and last.endswith(b"\n\ndata: [DONE]\n\n"), last
        assert b"read nothing for 1 s" in last and b"reconnect to resume" in last, last
        writer.close()

        # and reconnectToStream's request gets the whole reply, from its start to its finish
        async with session.get(gw.http + "/api/chat/c-stalled/stream", timeout=aiohttp.ClientTimeout(60)) as r:
            assert r.status == 200 and r.headers["x-vercel-ai-ui-message-stream"] == "v1"
            events = [line for line in (await r.read()).split(b"\n") if line.startswith(b"data: ")]
    chunks = [orjson.loads(e[6:]) for e in events if e != b"data: [DONE]"]
    assert events[-1] == b"data: [DONE]" and chunks[-1]["type"] == "finish", chunks[-3:]
    assert chunks[0]["type"] == "start" and not [c for c in chunks if c["type"] == "error"]
    assert sum(c["type"] == "text-delta" for c in chunks) == tokens
    assert "Traceback" not in gw.text() and "sk-fast-upstream-key" not in gw.text()


async def test_a_stalled_background_response_reader_is_cut_and_the_response_goes_on(spawn, tmp_path) -> None:
    gw = start_gateway(spawn, tmp_path)
    tokens = 200_000
    body = {"model": "fast-1", "input": "x", "max_output_tokens": tokens, "stream": True, "background": True}
    reader, writer = await stalled_post(gw, "/v1/responses", body)

    async with aiohttp.ClientSession() as session:
        metrics = await metrics_once_cut(session, gw)
        assert 'reason="slow_consumer"' not in metrics  # the response was not cancelled

        head: list[bytes] = []
        last = await last_chunk_on_waking(reader, head)
        assert b'"type":"error"' in last and b'"code":"slow_consumer"' in last, last
        assert b"reconnect to resume" in last, last
        writer.close()
        response_id = head[0].split(b'"id":"', 1)[1].split(b'"', 1)[0].decode()
        assert response_id.startswith("resp_"), head[0][:400]

        # attached again, it gets the whole response, from its start to its completion
        url = f"{gw.http}/v1/responses/{response_id}?stream=true"
        async with session.get(url, timeout=aiohttp.ClientTimeout(60)) as r:
            assert r.status == 200
            events = [orjson.loads(b[6:]) for b in (await r.read()).split(b"\n") if b.startswith(b"data: ")]
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed", events[-2:]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert sum(e["type"] == "response.output_text.delta" for e in events) == tokens
    assert not [e for e in events if e["type"] == "error"]
    assert "Traceback" not in gw.text() and "sk-fast-upstream-key" not in gw.text()
