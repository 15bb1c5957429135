"""Contract: WSConnection on a real aiohttp ``WebSocketResponse``, with real clients on a real socket.

It fails if aiohttp changes shape under us: the fast path is lost (``conn.fast``), a frame
arrives damaged, a frame can follow our CLOSE, or the slow-consumer cut-off stops firing
(on the fast path or on the fallback, forced by hiding aiohttp's private writer).

``TOKENWIRE_CONTRACT_HIDE_WRITER=1`` hides the private writer in every test: the fast-path
assertions then fail, which is what an aiohttp upgrade that moved it would look like.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from rawws import Raw, frame

from tokenwire.server import connection
from tokenwire.server.connection import STALL_SLACK, WRITE_BUFFER_LIMIT, State, WSConnection

HIDE_WRITER = os.environ.get("TOKENWIRE_CONTRACT_HIDE_WRITER") == "1"
PATHS = ["fast", "fallback"]


class OpaqueWriter:
    """aiohttp's frame writer as a later aiohttp might shape it: it sends frames, but shows no transport or protocol."""

    def __init__(self, inner: Any) -> None:
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name: str) -> Any:
        if name in ("transport", "protocol"):
            raise AttributeError(name)
        return getattr(self._inner, name)


class Peer:
    """The server side of one accepted socket."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.done = asyncio.Event()

    def connection(self, **kwargs: Any) -> WSConnection:
        return WSConnection(self.ws, self.request.transport, **kwargs)  # type: ignore[arg-type]


class Server:
    def __init__(self) -> None:
        self.accepted: asyncio.Queue[Peer] = asyncio.Queue()
        self.peers: list[Peer] = []
        self.hide_writer = HIDE_WRITER
        self.port = 0

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, autoping=False)  # as server.ws opens them
        await ws.prepare(request)
        if self.hide_writer:
            ws._writer = OpaqueWriter(ws._writer)  # type: ignore[assignment]
        peer = Peer(ws, request)
        self.peers.append(peer)
        await self.accepted.put(peer)
        await peer.done.wait()
        return ws

    async def accept(self) -> Peer:
        return await asyncio.wait_for(self.accepted.get(), 10)

    async def raw(self, rcvbuf: int | None = None) -> tuple[Raw, Peer]:
        raw = await Raw.connect("127.0.0.1", self.port, path="/ws", rcvbuf=rcvbuf)
        assert raw.status == 101
        return raw, await self.accept()


@contextlib.asynccontextmanager
async def running_server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_get("/ws", srv.handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield srv
    finally:
        for peer in srv.peers:
            peer.done.set()
        await runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with running_server() as srv:
        yield srv


def force(server: Server, path: str) -> None:
    if path == "fallback":
        server.hide_writer = True


async def written(wait: Any) -> None:
    if wait is not None:
        await wait


async def read_frames(raw: Raw, count: int) -> list[tuple[int, bytes]]:
    return [await raw.recv_frame() for _ in range(count)]


# -- the fast path ---------------------------------------------------------------------------
async def test_the_fast_path_is_on_for_a_real_websocket_response(server: Server) -> None:
    raw, peer = await server.raw()
    conn = peer.connection()
    assert conn.fast is True, "aiohttp's private writer changed shape: every frame now takes send_frame"
    assert conn.state is State.OPEN
    raw.close()


async def test_losing_the_private_writer_falls_back_and_says_so_once(
    server: Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "_warned_fallback", False)
    server.hide_writer = True
    caplog.set_level(logging.WARNING, "tokenwire.ws")
    conns = []
    for _ in range(2):
        raw, peer = await server.raw()
        conns.append((raw, peer.connection()))
    assert [c.fast for _, c in conns] == [False, False]
    warnings = [r.getMessage() for r in caplog.records if "fast path is OFF" in r.getMessage()]
    assert len(warnings) == 1, warnings
    for raw, conn in conns:
        assert conn.cork() is False  # nothing to cork into
        await written(conn.write(b"still works"))
        assert await raw.recv_frame() == (1, b"still works")
        raw.close()


# -- frames ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
async def test_frames_of_every_length_arrive_intact_at_a_real_client(server: Server, path: str) -> None:
    force(server, path)
    sizes = (0, 1, 125, 126, 65535, 65536, 300_000)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{server.port}/ws", autoping=False) as ws,
    ):
        peer = await server.accept()
        conn = peer.connection()

        async def send() -> None:  # past the buffer limit it waits for the client, which reads meanwhile
            for n in sizes:
                await written(conn.write(bytes(65 + (i + n) % 26 for i in range(n))))
            conn.ping(b"are you there")
            await written(conn.pong(b"here"))

        sending = asyncio.ensure_future(send())
        for n in sizes:
            msg = await ws.receive(timeout=10)
            assert msg.type is WSMsgType.TEXT and len(msg.data) == n
            assert msg.data == bytes(65 + (i + n) % 26 for i in range(n)).decode()
        ping = await ws.receive(timeout=10)
        assert (ping.type, ping.data) == (WSMsgType.PING, b"are you there")
        pong = await ws.receive(timeout=10)
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"here")
        await asyncio.wait_for(sending, 10)
        closing = conn.close(1000)
        assert (await ws.receive(timeout=10)).type is WSMsgType.CLOSE  # the client answers it
        await asyncio.wait_for(closing, 10)
        assert conn.state is State.CLOSED


@pytest.mark.parametrize("path", PATHS)
async def test_frames_have_the_right_header_for_each_length(server: Server, path: str) -> None:
    force(server, path)
    raw, peer = await server.raw()
    conn = peer.connection()
    for n in (0, 125, 126, 65535, 65536):
        await written(conn.write(b"x" * n))
    assert await raw.reader.readexactly(2) == b"\x81\x00"
    assert await raw.reader.readexactly(2 + 125) == b"\x81\x7d" + b"x" * 125
    assert await raw.reader.readexactly(4 + 126) == b"\x81\x7e\x00\x7e" + b"x" * 126
    assert await raw.reader.readexactly(4 + 65535) == b"\x81\x7e\xff\xff" + b"x" * 65535
    assert await raw.reader.readexactly(10 + 65536) == b"\x81\x7f" + (65536).to_bytes(8, "big") + b"x" * 65536
    raw.close()


async def test_corked_frames_leave_in_one_write_in_order(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, peer = await server.raw()
    conn = peer.connection()
    transport = peer.request.transport
    assert transport is not None
    writes: list[bytes] = []
    real_write = transport.write

    def spy(data: bytes) -> None:
        writes.append(bytes(data))
        real_write(data)

    monkeypatch.setattr(transport, "write", spy)
    assert conn.cork() is True
    assert conn.cork() is False  # already corked (two subscribers on one socket)
    for token in (b"a", b"bb", b"ccc"):
        assert conn.write(token) is None
    assert writes == []
    assert conn.uncork() is None
    assert writes == [b"\x81\x01a\x81\x02bb\x81\x03ccc"]
    conn.write(b"d")  # uncorked again: straight through
    assert writes[-1] == b"\x81\x01d"
    assert conn.uncork() is None and len(writes) == 2  # nothing corked: nothing written
    assert await read_frames(raw, 4) == [(1, b"a"), (1, b"bb"), (1, b"ccc"), (1, b"d")]
    raw.close()


async def fill(conn: WSConnection) -> None:
    """Write to a reader that reads nothing until the connection asks the writer to wait."""
    for _ in range(10_000):
        wait = conn.write(b"f" * 16384)
        if wait is not None:
            wait.close()  # type: ignore[attr-defined]  # not waited on: only its being asked for matters
            return
        await asyncio.sleep(0)  # the fallback's sends run as tasks
    raise AssertionError("the buffer never went over its limit")


async def test_uncork_reports_backpressure_like_write(server: Server) -> None:
    raw, peer = await server.raw(rcvbuf=4096)
    conn = peer.connection()
    await fill(conn)
    assert conn.buffered() > WRITE_BUFFER_LIMIT
    assert conn.cork() is True
    assert conn.write(b"x") is None  # corked: collected
    wait = conn.uncork()
    assert wait is not None  # the caller must wait, as after a plain write
    wait.close()  # type: ignore[attr-defined]
    raw.close()


# -- closing ---------------------------------------------------------------------------------
def refuses_everything(conn: WSConnection) -> None:
    for attempt in (
        lambda: conn.write(b"late"),
        lambda: conn.post(b"late"),
        lambda: conn.ping(),
        lambda: conn.pong(b"late"),
    ):
        with pytest.raises(ConnectionResetError):
            attempt()
    assert conn.cork() is False


@pytest.mark.parametrize("path", PATHS)
async def test_no_frame_can_follow_our_close(server: Server, path: str) -> None:
    force(server, path)
    raw, peer = await server.raw()
    conn = peer.connection()
    await written(conn.write(b"before"))  # written before the close: it leaves before the CLOSE
    closing = asyncio.ensure_future(conn.close(4001, b"bye"))
    assert conn.state is State.CLOSING
    refuses_everything(conn)
    with pytest.raises(ConnectionResetError):
        await conn.send(b"late")
    await asyncio.sleep(0)
    refuses_everything(conn)  # also once the CLOSE is on its way
    assert await raw.recv_frame() == (1, b"before")
    assert await raw.recv_frame() == (8, struct.pack("!H", 4001) + b"bye")
    refuses_everything(conn)
    await raw.send(frame(struct.pack("!H", 4001), opcode=8))  # the client's half of the handshake
    await asyncio.wait_for(closing, 10)
    assert conn.state is State.CLOSED
    refuses_everything(conn)
    await conn.close(1000)  # idempotent
    # the client sees the CLOSE and nothing after it
    assert await asyncio.wait_for(raw.reader.read(), 10) == b""
    raw.close()


@pytest.mark.parametrize("path", PATHS)
async def test_no_frame_can_follow_aiohttp_s_answer_to_a_client_close(server: Server, path: str) -> None:
    force(server, path)
    raw, peer = await server.raw()
    conn = peer.connection()
    reading = asyncio.ensure_future(peer.ws.receive())  # aiohttp answers a client's CLOSE while it reads
    await raw.send(frame(struct.pack("!H", 1000) + b"done", opcode=8))
    msg = await asyncio.wait_for(reading, 10)
    assert msg.type is WSMsgType.CLOSE
    assert conn.state is not State.OPEN
    refuses_everything(conn)
    assert await raw.recv_frame() == (8, struct.pack("!H", 1000))
    assert await asyncio.wait_for(raw.reader.read(), 10) == b""
    raw.close()


async def test_drop_aborts_and_refuses_writes(server: Server) -> None:
    raw, peer = await server.raw()
    conn = peer.connection()
    conn.drop()
    assert conn.state is State.CLOSED
    refuses_everything(conn)
    assert await asyncio.wait_for(raw.reader.read(), 10) == b""
    raw.close()


# -- the slow consumer -----------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
async def test_slow_consumer_is_cut_by_a_real_cancel_on_either_path(server: Server, path: str) -> None:
    force(server, path)
    raw, peer = await server.raw(rcvbuf=4096)  # a reader that never reads
    stall = 0.5
    conn = peer.connection(slow_consumer_timeout=stall)
    assert conn.fast is (path == "fast") or HIDE_WRITER
    cut_at: list[float] = []
    after_cut = 0

    async def generation() -> None:
        """What a relay does: write, and wait when told to."""
        nonlocal after_cut
        while True:
            if cut_at:
                after_cut += 1
            await written(conn.write(b"t" * 1000))

    task = asyncio.ensure_future(generation())

    def on_slow_consumer() -> None:  # what the session does: Run.cancel on the waiting task itself
        cut_at.append(time.monotonic())
        task.cancel()
        conn.post(b'{"type":"error","code":"slow_consumer"}')

    conn.on_slow_consumer = on_slow_consumer
    t0 = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 20)
    assert cut_at, "the slow-consumer cut-off never fired"
    assert cut_at[0] - t0 >= stall
    assert after_cut == 0  # the cancel landed at the wait it was in: not one frame after the cut
    # just cut: the last frame goes out without waiting; past the slack, writes are refused
    assert conn.write(b'{"type":"end","reason":"slow_consumer"}') is None
    with pytest.raises(ConnectionResetError):
        for _ in range((WRITE_BUFFER_LIMIT + STALL_SLACK) // 4096 + 2):
            await asyncio.sleep(0)  # the fallback's sends run as tasks
            conn.write(b"s" * 4096)
    assert conn.buffered() <= WRITE_BUFFER_LIMIT + STALL_SLACK + 2 * 4096  # bounded, whatever the reader does
    # the reader wakes up: the error, then the end, are the last frames it finds
    seen = b""
    while b'"reason":"slow_consumer"' not in seen:
        chunk = await asyncio.wait_for(raw.reader.read(1 << 20), 10)
        assert chunk, "the socket closed before the end frame"
        seen = seen[-8192:] + chunk
    tail = seen[seen.rindex(b'"code":"slow_consumer"') :]
    assert b"t" * 1000 not in tail, "a generation frame followed the cut"
    raw.close()


# -- the same contract on uvloop (the gateway's loop when installed: other transports) ---------------
UVLOOP_CASES = {
    "fast-path": (test_the_fast_path_is_on_for_a_real_websocket_response, {}),
    **{f"frames-{p}": (test_frames_of_every_length_arrive_intact_at_a_real_client, {"path": p}) for p in PATHS},
    **{f"headers-{p}": (test_frames_have_the_right_header_for_each_length, {"path": p}) for p in PATHS},
    "uncork-backpressure": (test_uncork_reports_backpressure_like_write, {}),
    **{f"our-close-{p}": (test_no_frame_can_follow_our_close, {"path": p}) for p in PATHS},
    **{f"client-close-{p}": (test_no_frame_can_follow_aiohttp_s_answer_to_a_client_close, {"path": p}) for p in PATHS},
    "drop": (test_drop_aborts_and_refuses_writes, {}),
    **{f"slow-consumer-{p}": (test_slow_consumer_is_cut_by_a_real_cancel_on_either_path, {"path": p}) for p in PATHS},
}


@pytest.mark.parametrize("case", UVLOOP_CASES)
def test_the_contract_holds_on_uvloop(case: str) -> None:
    uvloop = pytest.importorskip("uvloop")
    test, kwargs = UVLOOP_CASES[case]

    async def main() -> None:
        async with running_server() as srv:
            await test(srv, **kwargs)  # type: ignore[operator]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
