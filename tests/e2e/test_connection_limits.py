"""Connections that make no progress are closed, one address cannot take every connection, and the
descriptor limit is lifted at start (against real gateway processes over raw sockets)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from procs import Proc
from wsutil import WS

pytestmark = pytest.mark.hostile

FAST = {"TOKENWIRE_HEADER_TIMEOUT": "1", "TOKENWIRE_BODY_TIMEOUT": "1"}


@pytest.fixture
def strict(spawn, tmp_path: Path) -> Proc:
    return spawn("serve", "--port", "0", env={"TOKENWIRE_DB": str(tmp_path / "s.db"), **FAST})


async def read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything until the server closes the connection (fails if it does not within ``timeout``)."""
    out = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            out += chunk
    return out


async def test_silent_connections_are_closed_after_the_header_timeout(strict) -> None:
    conns = [await asyncio.open_connection("127.0.0.1", strict.port) for _ in range(30)]
    t0 = time.monotonic()
    got = await asyncio.gather(*(read_all(r, 6) for r, _ in conns))
    assert got == [b""] * 30  # closed without an answer: nothing was asked
    assert time.monotonic() - t0 < 6
    for _, w in conns:
        w.close()


async def test_a_trickled_request_head_gets_408(strict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", strict.port)
    head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{strict.port}\r\nX-Slow: {'a' * 200}\r\n\r\n".encode()

    async def trickle() -> None:
        for i in range(len(head)):
            writer.write(head[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.2)  # the behaviour under test: one byte every 0.2 s

    task = asyncio.create_task(trickle())
    try:
        t0 = time.monotonic()
        raw = await read_all(reader, 6)
    finally:
        task.cancel()
        writer.close()
    assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
    assert b"request_timeout" in raw
    assert 0.9 < time.monotonic() - t0 < 6


async def test_a_stalled_head_after_a_keep_alive_request_still_gets_408(strict) -> None:
    """A connection leaves the header sweep while a request is handled and comes back after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", strict.port)
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{strict.port}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    await reader.readexactly(length)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127")  # half a head, then nothing
    t0 = time.monotonic()
    raw = await read_all(reader, 6)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
    assert 0.9 < time.monotonic() - t0 < 6


async def test_a_body_shorter_than_its_content_length_gets_408(strict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", strict.port)
    body = orjson.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
    writer.write(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{strict.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body) + 50}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    t0 = time.monotonic()
    raw = await read_all(reader, 8)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 408"), raw[:300]
    err = orjson.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]
    assert err["code"] == "request_timeout" and "body_timeout" in err["message"], err
    assert 0.9 < time.monotonic() - t0 < 8
    assert "Traceback" not in strict.text()


async def test_idle_websockets_and_keep_alive_connections_are_not_cut_by_the_header_timeout(strict) -> None:
    async with await WS.connect(strict.ws) as ws:
        reader, writer = await asyncio.open_connection("127.0.0.1", strict.port)
        ask = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{strict.port}\r\n\r\n".encode()
        writer.write(ask)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        await asyncio.sleep(2.5)  # the behaviour under test: idle for more than twice header_timeout
        writer.write(ask)  # the same keep-alive connection, still open
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        writer.close()
        await ws.send({"type": "chat", "id": "w", "model": "gpt-4.1", "content": "still here?"})
        assert (await ws.until_end("w"))[-1]["status"] == "completed"


async def test_one_address_cannot_hold_every_connection(spawn, tmp_path: Path) -> None:
    gw = spawn(
        "serve",
        "--port",
        "0",
        env={
            "TOKENWIRE_DB": str(tmp_path / "c.db"),
            "TOKENWIRE_MAX_CONNECTIONS_PER_IP": "20",
            "TOKENWIRE_LOOPBACK_EXEMPT": "0",  # the test's clients are all loopback addresses
        },
    )
    held = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(20)]
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    raw = await read_all(reader, 5)  # refused before it sends anything, then closed cleanly (EOF)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 429"), raw[:200]
    assert b"max_connections_per_ip" in raw and b"Retry-After: 1" in raw
    # another address is not locked out (all of 127.0.0.0/8 is loopback on Linux)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, local_addr=("127.0.0.2", 0))
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nConnection: close\r\n\r\n".encode())
    raw = await read_all(reader, 5)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    # a connection given back is a connection that can be had again
    held.pop()[1].close()
    for _ in range(100):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nConnection: close\r\n\r\n".encode())
        raw = await read_all(reader, 5)
        writer.close()
        if raw.startswith(b"HTTP/1.1 200"):
            break
        await asyncio.sleep(0.05)  # the server has not seen the close yet: poll, bounded
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    for _, w in held:
        w.close()


def test_the_descriptor_limit_is_raised_to_the_hard_limit_and_a_low_one_is_reported(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("TOKENWIRE_")}
    env.update({"TOKENWIRE_DB": str(tmp_path / "f.db"), "PYTHONUNBUFFERED": "1"})
    popen = subprocess.Popen(
        ["prlimit", "--nofile=256:1500", sys.executable, "-m", "tokenwire", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    lines: list[bytes] = []
    ready = threading.Event()

    def pump() -> None:
        assert popen.stdout is not None
        for line in iter(popen.stdout.readline, b""):
            lines.append(line)
            if b"listening on" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(20), b"".join(lines)
        limits = Path(f"/proc/{popen.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files")).split()
        assert row[3:5] == ["1500", "1500"], row  # soft lifted from 256 to the hard limit
        text = b"".join(lines).decode()
        assert "open-file limit (RLIMIT_NOFILE) is 1500" in text, text
    finally:
        popen.terminate()
        popen.wait(10)
