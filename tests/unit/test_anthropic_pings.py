"""The Messages stream's ``ping`` events: sent on silence once the stream has begun, never after the end."""

from __future__ import annotations

import asyncio
import time

import pytest

from tokenwire.dialects.anthropic_messages import SSEEncoder
from tokenwire.server import anthropic_api


class Run:
    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.unsubscribed: list[object] = []

    def unsubscribe(self, sub: object) -> None:
        self.unsubscribed.append(sub)


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


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.fixture(autouse=True)
def short_interval(monkeypatch) -> None:
    monkeypatch.setattr(anthropic_api, "PING_INTERVAL", 0.06)


async def test_a_silent_started_stream_is_pinged_and_the_wait_ends_with_the_run() -> None:
    run, resp, enc = Run(), Resp(), SSEEncoder("s", "m")
    task = asyncio.create_task(anthropic_api._wait_with_pings(run, SSE(resp), enc))
    await until(lambda: len(resp.writes) >= 2)
    assert set(resp.writes) == {b'event: ping\ndata: {"type":"ping"}\n\n'}
    run.ended.set()
    await asyncio.wait_for(task, 1)


async def test_a_gone_client_is_unsubscribed_at_the_ping() -> None:
    run, sse, enc = Run(), SSE(Resp(gone=True)), SSEEncoder("s", "m")
    task = asyncio.create_task(anthropic_api._wait_with_pings(run, sse, enc))
    await until(lambda: run.unsubscribed)
    await asyncio.sleep(anthropic_api.PING_INTERVAL * 2)  # two more intervals: no second attempt
    run.ended.set()
    await asyncio.wait_for(task, 1)
    assert run.unsubscribed == [sse]
