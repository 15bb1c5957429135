"""The HTTP watch: a silent started SSE stream is pinged in its dialect's shape; a client that left cancels.

A stream followed with ``following`` (a run that outlives its client) lets its client go instead."""

from __future__ import annotations

import asyncio
import time

import pytest
from eventually import aeventually

from tokenwire.dialects.anthropic_messages import SSEEncoder
from tokenwire.dialects.openai_chat import SSEChunkEncoder
from tokenwire.protocol.errors import GatewayError
from tokenwire.protocol.events import TOKEN
from tokenwire.server.disconnects import CUT_GRACE, DisconnectWatch


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
        self.stalled_at: float | None = None  #: as SSEResponder's: when its waiting write began to wait
        self.cuts: list[tuple[GatewayError, float]] = []
        self.lost = 0  #: times it was told its client left

    def cut(self, err: GatewayError, grace: float) -> None:
        self.cuts.append((err, grace))

    def _lost(self) -> None:
        self.lost += 1

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


async def test_a_stream_whose_write_waited_slow_consumer_timeout_is_cut_and_its_run_cancelled() -> None:
    counted: list[int] = []
    watch = DisconnectWatch(interval=0.01, slow_consumer_timeout=0.2, on_slow_consumer=lambda: counted.append(1))
    stalled, reading = SSE(Resp()), SSE(Resp())
    run_s, run_r = Run(), Run()
    s = asyncio.create_task(watch.wait(Request(), run_s, stalled, b": ping\n\n"))
    r = asyncio.create_task(watch.wait(Request(), run_r, reading, b": ping\n\n"))
    stalled.stalled_at = time.monotonic()
    reading.stalled_at = time.monotonic() + 3600  # waiting, but not for long: never cut in this test
    await asyncio.wait_for(s, 5)
    assert run_s.cancel_reason == "slow_consumer" and watch.cut == 1 and counted == [1]
    [(err, grace)] = stalled.cuts
    assert err.code == "slow_consumer" and "0.2 s" in err.message and grace == CUT_GRACE
    assert time.monotonic() - stalled.stalled_at >= 0.2  # not before its time
    assert run_r.cancel_reason is None and reading.cuts == [] and not r.done()
    run_r.ended.set()
    await r
    await watch.aclose()


async def test_with_slow_consumer_timeout_0_a_stalled_stream_is_never_cut() -> None:
    watch = DisconnectWatch(interval=0.01, slow_consumer_timeout=0.0)
    sse, run = SSE(Resp()), Run()
    sse.stalled_at = time.monotonic() - 3600
    task = asyncio.create_task(watch.wait(Request(), run, sse))
    for _ in range(10):  # the behaviour under test: ten sweeps go by
        await asyncio.sleep(0.01)
    assert sse.cuts == [] and run.cancel_reason is None
    run.ended.set()
    await task
    await watch.aclose()


class BufferedTransport:
    """A transport whose client reads nothing: it keeps whatever is written."""

    def __init__(self) -> None:
        self.data = b""
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return len(self.data)


async def test_a_cut_sse_responder_writes_the_dialect_s_error_and_the_body_s_end_then_closes() -> None:
    from tokenwire.server.streaming import SSEResponder

    transport = BufferedTransport()
    request = Request()
    request.transport = transport  # type: ignore[assignment]
    sse = SSEResponder(request, SSEChunkEncoder("chatcmpl-1", "m"))  # type: ignore[arg-type]
    sse.resp, sse._fast = Resp(), transport  # type: ignore[assignment]
    sse.cut(GatewayError("slow_consumer", "the client read nothing"), grace=0.05)
    event = b'data: {"error":'
    size, rest = transport.data.split(b"\r\n", 1)
    body, end = rest[: int(size, 16)], rest[int(size, 16) :]
    assert body.startswith(event) and b'"code":"slow_consumer"' in body and body.endswith(b"\n\n")
    assert end == b"\r\n0\r\n\r\n" and transport.closing
    with pytest.raises(ConnectionResetError):
        sse.send(b"", TOKEN, "late")  # nothing after the cut
    await aeventually(lambda: transport.aborted, timeout=5, message="aborted after the grace: never read")


async def test_a_followed_stream_whose_client_left_is_let_go_and_its_run_goes_on() -> None:
    watch = DisconnectWatch(interval=0.01, headers_after=0.0)
    run, request, sse = Run(), Request(), SSE(None)
    with watch.following(request, run, sse, b": ping\n\n"):
        for _ in range(5):  # sweeps go by: a followed stream is not started before its first event
            await asyncio.sleep(0.01)
        assert sse.starts == 0
        assert request.transport is not None
        request.transport.closing = True
        await aeventually(lambda: sse.lost == 1, timeout=5, message="the responder is told")
        assert run.cancel_reason is None and watch.cancelled == 0
        assert not watch.waiting  # and it is watched no more
    await watch.aclose()


async def test_a_followed_stream_that_stalled_is_cut_and_its_run_goes_on() -> None:
    counted: list[int] = []
    watch = DisconnectWatch(interval=0.01, slow_consumer_timeout=0.1, on_slow_consumer=lambda: counted.append(1))
    run, sse = Run(), SSE(Resp())
    sse.stalled_at = time.monotonic()
    with watch.following(Request(), run, sse):
        await aeventually(lambda: sse.cuts, timeout=5, message="the stalled stream is cut")
        [(err, grace)] = sse.cuts
        assert err.code == "slow_consumer" and "reconnect to resume" in err.message and grace == CUT_GRACE
        assert run.cancel_reason is None and watch.cut == 1 and counted == [1]
    assert not watch.waiting
    await watch.aclose()


async def test_a_ping_to_a_gone_client_of_a_followed_stream_lets_the_client_go_not_the_run() -> None:
    watch = DisconnectWatch(interval=0.01, keepalive=0.03)
    run, sse = Run(), SSE(Resp(gone=True))
    with watch.following(Request(), run, sse, b": ping\n\n"):
        await aeventually(lambda: sse.lost >= 1, timeout=5, message="the responder is told")
        assert run.cancel_reason is None
    await watch.aclose()
