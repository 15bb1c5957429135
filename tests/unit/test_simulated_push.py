"""The simulated provider's push path (upstream/simulated._SimulatedStream.push): its pacing timer hands
every token to the sink in order, then the finish, usage and ``None`` once; ``pause_reading`` holds it,
``resume_reading`` goes on; ``close`` stops it. And a run on it goes through the relay's push path."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
import pytest
from eventually import aeventually

from tokenwire.protocol import events as ev
from tokenwire.protocol import frames as fr
from tokenwire.runtime.gateway import Gateway
from tokenwire.simulate.reply import iter_reply_tokens
from tokenwire.upstream.base import ChatCall
from tokenwire.upstream.simulated import SimulatedProvider

MESSAGES = [{"role": "user", "content": "tell me a story"}]


def call(max_tokens: int) -> ChatCall:
    return ChatCall("gpt-4.1", MESSAGES, {"max_tokens": max_tokens})


def expected(max_tokens: int) -> list[str]:
    return list(iter_reply_tokens(MESSAGES, max_tokens))


class Sink:
    """Records what the stream pushes; ``on_token(n)`` runs after the n-th token (counting from 1)."""

    def __init__(self, on_token: dict[int, Any] | None = None) -> None:
        self.tokens: list[str] = []
        self.tail: list[tuple[int, Any]] = []  #: everything that is not a token, in order
        self.ends = 0
        self.calls = 0
        self.on_token = on_token or {}

    def __call__(self, events: list[Any] | None) -> None:
        self.calls += 1
        assert self.ends == 0, "pushed after the end"
        if events is None:
            self.ends += 1
            return
        for kind, value in events:
            if kind == ev.TOKEN:
                assert not self.tail, "a token after the finish"
                self.tokens.append(value)
                hook = self.on_token.get(len(self.tokens))
                if hook is not None:
                    hook()
            else:
                self.tail.append((kind, value))


async def first_token(stream: Any) -> list[str]:
    """What routing does: read until the first token."""
    events = await stream.read()
    assert events and events[0][0] == ev.TOKEN
    return [v for k, v in events if k == ev.TOKEN]


@pytest.mark.parametrize("speed", [0.0, 20.0])
async def test_every_token_is_pushed_in_order_then_finish_usage_and_one_end(speed: float) -> None:
    n = 300  # more than one unpaced batch of 64
    stream = await SimulatedProvider(speed=speed).start(call(n))
    got = await first_token(stream)
    sink = Sink()
    stream.push(sink)
    await aeventually(lambda: sink.ends == 1, timeout=30, interval=0, message="the stream ended")
    assert got + sink.tokens == expected(n)
    assert [k for k, _ in sink.tail] == [ev.FINISH, ev.USAGE]
    assert sink.tail[0][1] == "stop" and sink.tail[1][1]["completion_tokens"] == n
    assert sink.calls >= 2 + (n - len(got)) // 64  # batches, not one call for the lot
    await asyncio.sleep(0.01)
    assert sink.ends == 1  # nothing after the end


async def test_a_paced_stream_sends_one_token_per_tick_when_on_time() -> None:
    # at the model's own pace (a token every ~20 ms): a loaded machine's loop lag is well under
    # one interval, so a late tick does not merge tokens as it did at 10x speed (~2 ms)
    stream = await SimulatedProvider(speed=1.0).start(call(20))
    await first_token(stream)
    sink = Sink()
    stream.push(sink)
    await aeventually(lambda: sink.ends == 1, timeout=30, interval=0, message="the stream ended")
    assert len(sink.tokens) == 19
    # one sink call per tick (the last tick carries the finish), plus the end: far fewer than
    # 19 would mean the schedule was lost and everything went out in a burst
    assert sink.calls >= 10


async def test_pause_reading_holds_the_stream_until_resumed() -> None:
    n = 200
    stream = await SimulatedProvider(speed=0.0).start(call(n))
    got = await first_token(stream)
    sink = Sink()
    sink.on_token[70] = stream.pause_reading  # held from inside the sink, as the relay's stall does
    stream.push(sink)
    await aeventually(lambda: len(sink.tokens) >= 70, timeout=5, interval=0, message="the first pushes")
    held = len(sink.tokens)
    await asyncio.sleep(0.02)  # stays held: no timer may fire meanwhile
    assert len(sink.tokens) == held and sink.ends == 0
    assert held < n - len(got)
    stream.resume_reading()
    stream.resume_reading()  # twice: still one timer, no token twice
    await aeventually(lambda: sink.ends == 1, timeout=5, interval=0, message="the stream ended")
    assert got + sink.tokens == expected(n)


async def test_pause_before_push_then_resume_goes_on_from_where_it_was() -> None:
    stream = await SimulatedProvider(speed=0.0).start(call(100))
    got = await first_token(stream)
    sink = Sink()
    stream.pause_reading()
    stream.push(sink)
    await asyncio.sleep(0.01)
    assert sink.calls == 0
    stream.resume_reading()
    await aeventually(lambda: sink.ends == 1, timeout=5, interval=0, message="the stream ended")
    assert got + sink.tokens == expected(100)


@pytest.mark.parametrize("speed", [0.0, 20.0])
async def test_close_stops_the_stream_without_an_end(speed: float) -> None:
    stream = await SimulatedProvider(speed=speed).start(call(300))
    await first_token(stream)
    sink = Sink()
    sink.on_token[5] = stream.close  # closed from inside the sink, as a cancel by a subscriber's write does
    stream.push(sink)
    await aeventually(lambda: len(sink.tokens) >= 5, timeout=10, interval=0, message="the first pushes")
    calls = sink.calls
    await asyncio.sleep(0.05)
    assert sink.calls == calls and sink.ends == 0 and len(sink.tokens) < 70
    assert await stream.read() is None


async def test_a_stream_read_to_its_end_pushes_only_the_end() -> None:
    stream = await SimulatedProvider(speed=0.0).start(call(3))
    assert [v for k, v in await stream.read() if k == ev.TOKEN] == expected(3)
    assert [k for k, _ in await stream.read()] == [ev.FINISH, ev.USAGE]
    sink = Sink()
    stream.push(sink)
    assert sink.ends == 1 and sink.tokens == [] and sink.tail == []


# -- through the relay -----------------------------------------------------------------


class Sub:
    """A subscriber that makes the relay wait on ``gate`` after its ``slow_on``-th token."""

    def __init__(self, slow_on: int) -> None:
        self.got: list[tuple[int, Any]] = []
        self.slow_on = slow_on
        self.gate = asyncio.get_running_loop().create_future()

    def send(self, rest: bytes, kind: int, value: Any) -> Any:
        self.got.append((kind, value))
        if kind == ev.TOKEN and len(self.tokens()) == self.slow_on:
            return self.gate
        return None

    def tokens(self) -> list[str]:
        return [v for k, v in self.got if k == ev.TOKEN]


async def begin(gw: Gateway, sub: Sub, n: int, speed: float = 0.0):
    frame = {"type": "chat", "id": "a", "model": "gpt-4.1", "content": "tell me a story", "params": {"max_tokens": n}}
    chat = fr.parse_frame(orjson.dumps(frame).decode(), gw.limits, 0)
    route = gw.router.resolve(chat.model)
    route = dataclasses.replace(route, provider=SimulatedProvider(speed=speed), plan=None)
    run = await gw.registry.begin(chat, route, None, False)
    run.subscribe(sub)
    return run


async def test_a_run_on_the_simulated_provider_is_pushed_and_held_by_a_slow_subscriber(gw) -> None:
    n = 300
    sub = Sub(slow_on=100)
    run = await begin(gw, sub, n)
    await aeventually(lambda: len(sub.tokens()) >= 100, timeout=5, interval=0, message="the first tokens")
    assert run.pushing  # the push path, not the read loop
    await asyncio.sleep(0.02)  # held: nothing more while the subscriber is full
    assert len(sub.tokens()) == 100 and run.reads % 2 == 0
    sub.gate.set_result(None)
    await asyncio.wait_for(run.ended.wait(), 5)
    assert run.gen.status == "completed" and sub.tokens() == expected(n)
    assert run.gen.token_count == n and sub.got[-1][0] == ev.END


async def test_a_client_pause_holds_a_paced_simulated_run_and_a_cancel_stops_it(gw) -> None:
    sub = Sub(slow_on=-1)
    run = await begin(gw, sub, 1000, speed=20.0)
    await aeventually(lambda: run.pushing and len(sub.tokens()) >= 3, timeout=5, interval=0, message="pushing")
    run.set_paused(self_=True)
    held = len(sub.tokens())
    await asyncio.sleep(0.05)  # at speed 20 about 40 tokens would be due meanwhile
    assert len(sub.tokens()) == held
    run.set_paused(self_=False)
    await aeventually(lambda: len(sub.tokens()) > held, timeout=5, interval=0, message="going on")
    run.cancel("client_gone")
    await asyncio.wait_for(run.ended.wait(), 5)
    assert run.gen.status == "cancelled" and sub.tokens() == expected(1000)[: len(sub.tokens())]
    assert len(sub.tokens()) < 1000
