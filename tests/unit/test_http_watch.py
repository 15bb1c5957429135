"""The HTTP watch: a silent started SSE stream is pinged in its dialect's shape; a client that left cancels."""

from __future__ import annotations

import asyncio

from eventually import aeventually

from tokenwire.dialects.anthropic_messages import SSEEncoder
from tokenwire.server.disconnects import DisconnectWatch


class Run:
    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.cancel_reason: str | None = None

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self.ended.set()


class Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class Request:
    def __init__(self) -> None:
        self.transport: Transport | None = Transport()


class Resp:
    def __init__(self, gone: bool = False) -> None:
        self.writes: list[bytes] = []
        self.gone = gone

    async def write(self, data: bytes) -> None:
        if self.gone:
            raise ConnectionResetError("Cannot write to closing transport")
        self.writes.append(data)


class SSE:
    def __init__(self, resp: Resp | None) -> None:
        self.resp = resp
        self.writes = 0
        self.starts = 0

    def start(self) -> asyncio.Future[None]:
        """As SSEResponder.start: the response exists at once, its headers go out in the future."""
        self.starts += 1
        self.resp = Resp()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_a_silent_started_stream_is_pinged_and_the_wait_ends_with_the_run() -> None:
    watch = DisconnectWatch(interval=0.01, keepalive=0.05)
    run, resp = Run(), Resp()
    task = asyncio.create_task(watch.wait(Request(), run, SSE(resp), SSEEncoder.PING))
    await aeventually(lambda: len(resp.writes) >= 2, timeout=5, message="two pings")
    assert set(resp.writes) == {b'event: ping\ndata: {"type":"ping"}\n\n'}
    run.ended.set()
    assert await asyncio.wait_for(task, 1) is True
    await watch.aclose()


async def test_a_stream_that_writes_is_not_pinged_and_one_not_started_is_not_either() -> None:
    watch = DisconnectWatch(interval=0.01, keepalive=0.05)
    busy, quiet = SSE(Resp()), SSE(None)
    run_a, run_b = Run(), Run()
    a = asyncio.create_task(watch.wait(Request(), run_a, busy, b": ping\n\n"))
    b = asyncio.create_task(watch.wait(Request(), run_b, quiet, b": ping\n\n"))
    for _ in range(20):  # the behaviour under test: writes keep coming faster than the keep-alive
        busy.writes += 1
        await asyncio.sleep(0.01)
    assert busy.resp is not None and busy.resp.writes == [] and watch.pings == 0
    run_a.ended.set()
    run_b.ended.set()
    await asyncio.gather(a, b)
    await watch.aclose()


async def test_a_client_that_left_cancels_its_run() -> None:
    watch = DisconnectWatch(interval=0.01)
    run, request = Run(), Request()
    task = asyncio.create_task(watch.wait(request, run))
    assert request.transport is not None
    request.transport.closing = True
    assert await asyncio.wait_for(task, 1) is False
    assert run.cancel_reason == "client_gone" and watch.cancelled == 1
    await watch.aclose()


async def test_a_ping_to_a_gone_client_cancels_the_run() -> None:
    watch = DisconnectWatch(interval=0.01, keepalive=0.03)
    run = Run()
    task = asyncio.create_task(watch.wait(Request(), run, SSE(Resp(gone=True)), b": ping\n\n"))
    assert await asyncio.wait_for(task, 2) is False
    assert run.cancel_reason == "client_gone"
    await watch.aclose()


async def test_a_stream_waiting_for_its_first_event_is_started_after_headers_after_then_pinged() -> None:
    watch = DisconnectWatch(interval=0.01, keepalive=0.05, headers_after=0.05)
    run, sse = Run(), SSE(None)
    task = asyncio.create_task(watch.wait(Request(), run, sse, b": keep-alive\n\n"))
    await aeventually(lambda: sse.resp is not None and len(sse.resp.writes) >= 2, timeout=5, message="start, 2 pings")
    assert sse.starts == 1 and watch.started == 1
    assert set(sse.resp.writes) == {b": keep-alive\n\n"}
    run.ended.set()
    assert await asyncio.wait_for(task, 1) is True
    await watch.aclose()


async def test_a_negative_headers_after_never_starts_a_stream_early() -> None:
    watch = DisconnectWatch(interval=0.01, keepalive=0.02, headers_after=-1)
    run, sse = Run(), SSE(None)
    task = asyncio.create_task(watch.wait(Request(), run, sse, b": keep-alive\n\n"))
    for _ in range(10):  # sweeps go by; the stream stays unstarted
        await asyncio.sleep(0.01)
    assert sse.resp is None and sse.starts == 0 and watch.pings == 0
    run.ended.set()
    await asyncio.gather(task)
    await watch.aclose()
