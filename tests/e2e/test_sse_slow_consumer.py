"""An SSE client that stops reading is cut off (``slow_consumer``) as a WebSocket's is: its
generation is cancelled, and what it finds when it wakes is the error in its own dialect."""

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


@pytest.mark.parametrize("dialect", sorted(REQUESTS))
async def test_a_stalled_sse_reader_is_cut_and_finds_the_error_in_its_dialect(spawn, tmp_path, dialect) -> None:
    fast = spawn("simulate", "--port", "0", "--fast")
    config = tmp_path / "tokenwire.toml"
    config.write_text(
        f"""
[server]
slow_consumer_timeout = 1.0
[providers.fast]
kind = "openai"
base_url = "{fast.http}/v1"
api_key = "sk-fast-upstream-key"
models = ["fast-*"]
"""
    )
    gw = spawn("serve", "--port", "0", "--config", str(config), env={"TOKENWIRE_DB": ":memory:"})
    path, body, marker = REQUESTS[dialect]
    payload = orjson.dumps(body)

    # the stalled reader: a 4 KiB receive buffer, and it reads nothing
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
    t0 = time.monotonic()

    async with aiohttp.ClientSession() as session:

        async def cut() -> str | None:
            async with session.get(gw.http + "/metrics") as r:
                text = await r.text()
            line = next(x for x in text.splitlines() if x.startswith("tokenwire_slow_consumer_cutoffs_total"))
            return text if line.split()[-1] == "1.0" else None

        metrics = await aeventually(cut, timeout=30, interval=0.2, message="the stalled SSE stream is cut")
        assert 'tokenwire_cancellations_total{reason="slow_consumer"} 1.0' in metrics
        took = time.monotonic() - t0

        async def idle() -> bool:
            async with session.get(gw.http + "/healthz") as r:
                return (await r.json())["generations"] == 0

        await aeventually(idle, timeout=10, interval=0.1, message="its generation is gone")

    # the reader wakes up: the stream ends with the error in its dialect, then the body's end
    seen = b""
    while True:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
        if not chunk:
            break
        seen = seen[-8192:] + chunk
    assert seen.endswith(b"\r\n0\r\n\r\n"), seen[-300:]
    last = seen[: -len(b"\r\n0\r\n\r\n")].rsplit(b"\r\n", 1)[1]  # the last chunk's data (SSE lines end in LF)
    assert marker in last and b"read nothing for 1 s" in last, last
    assert seen.count(b"read nothing") == 1  # one error, and no token after it: it is the last chunk
    print(f"\n{dialect}: stalled SSE reader cut {took:.1f} s after its request")
    writer.close()
    assert "Traceback" not in gw.text() and "sk-fast-upstream-key" not in gw.text()
