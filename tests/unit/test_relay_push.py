"""The relay's push path (Run._follow / _pushed) driven by a fake push stream: events delivered in the
stream's callback, the upstream reading held while a subscriber must be waited on or the client paused,
then released; every event once, in order. (Over real sockets: e2e/test_upstream_wire.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
from eventually import aeventually

from tokenwire.protocol import events as ev
from tokenwire.protocol import frames as fr
from tokenwire.protocol.errors import GatewayError
from tokenwire.runtime.gateway import Gateway


class PushStream:
    """What upstream/wire.H1Stream offers the relay, with the calls recorded."""

    def __init__(self, first: list[Any]) -> None:
        self.first: list[Any] | None = first
        self.sink: Any = None
        self.calls: list[str] = []

    async def read(self) -> list[Any] | None:
        first, self.first = self.first, None
        assert first is not None, "read() after push()"
        return first

    def push(self, sink: Any) -> None:
        self.sink = sink
        self.calls.append("push")

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def close(self) -> None:
        self.calls.append("close")


class Provider:
    name = "fake"
    simulated = False

    def __init__(self, stream: PushStream) -> None:
        self.stream = stream

    async def start(self, call: Any) -> PushStream:
        return self.stream

    async def aclose(self) -> None:
        return None


class Sub:
    """A subscriber that makes the relay wait on ``gate`` after the token named ``slow_on``."""

    def __init__(self, slow_on: str | None = None) -> None:
        self.got: list[tuple[int, Any]] = []
        self.slow_on = slow_on
        self.gate = asyncio.get_running_loop().create_future()

    def send(self, rest: bytes, kind: int, value: Any) -> Any:
        self.got.append((kind, value))
        if kind == ev.TOKEN and value == self.slow_on:
            return self.gate
        return None

    def tokens(self) -> list[str]:
        return [v for k, v in self.got if k == ev.TOKEN]


async def start(gw: Gateway, stream: PushStream, sub: Sub):
    frame = {"type": "chat", "id": "a", "model": "gpt-4.1", "content": "hi"}
    chat = fr.parse_frame(orjson.dumps(frame).decode(), gw.limits, 0)
    route = dataclasses.replace(gw.router.resolve(chat.model), provider=Provider(stream), plan=None)
    run = await gw.registry.begin(chat, route, None, False)
    run.subscribe(sub)
    await aeventually(lambda: stream.sink is not None, timeout=5, interval=0, message="the run pushes")
    return run


def tok(*texts: str) -> list[Any]:
    return [(ev.TOKEN, t) for t in texts]


async def test_a_slow_subscriber_holds_the_upstream_and_gets_the_rest_in_order(gw) -> None:
    stream = PushStream(tok("a"))
    sub = Sub(slow_on="c")
    run = await start(gw, stream, sub)
    assert sub.tokens() == ["a"] and stream.calls == ["push"]
    stream.sink(tok("b"))  # the hot path: delivered within the callback
    assert sub.tokens() == ["a", "b"] and stream.calls == ["push"]
    stream.sink(tok("c", "d", "e"))  # "c" fills the subscriber's buffer: "d", "e" must wait
    assert sub.tokens() == ["a", "b", "c"] and stream.calls == ["push", "pause"]
    reads = run.reads
    assert reads % 2 == 0  # no read outstanding while held: the watchdog leaves it alone
    await asyncio.sleep(0.01)  # stays: the relay must not move on while the subscriber is full
    assert sub.tokens() == ["a", "b", "c"]
    sub.gate.set_result(None)
    await aeventually(lambda: stream.calls[-1] == "resume", timeout=5, interval=0, message="reading resumed")
    assert sub.tokens() == ["a", "b", "c", "d", "e"] and run.reads % 2 == 1
    stream.sink([(ev.FINISH, "stop"), (ev.USAGE, {"prompt_tokens": 3, "completion_tokens": 5})])
    stream.sink(None)
    await asyncio.wait_for(run.ended.wait(), 5)
    assert run.gen.status == "completed" and run.gen.answer == "abcde"
    kinds = [k for k, _ in sub.got]
    assert kinds[0] == ev.START and kinds[-1] == ev.END and kinds.count(ev.TOKEN) == 5
    assert sub.got[-1][1]["usage"]["completion_tokens"] == 5
    assert "close" not in stream.calls  # a completed response keeps its connection for the pool


async def test_a_client_pause_holds_the_upstream_until_resumed(gw) -> None:
    stream = PushStream(tok("a"))
    sub = Sub()
    run = await start(gw, stream, sub)
    run.set_paused(self_=True)
    assert stream.calls == ["push", "pause"]
    run.set_paused(self_=False)
    assert stream.calls == ["push", "pause", "resume"]
    stream.sink(tok("b"))
    stream.sink([(ev.FINISH, "stop")])
    stream.sink(None)
    await asyncio.wait_for(run.ended.wait(), 5)
    assert sub.tokens() == ["a", "b"] and run.gen.status == "completed"


async def test_an_error_pushed_mid_stream_fails_the_run_after_the_tokens_before_it(gw) -> None:
    stream = PushStream(tok("a"))
    sub = Sub()
    run = await start(gw, stream, sub)
    err = GatewayError("upstream_error", "fake cut the stream mid-way", retryable=True)
    stream.sink([*tok("b", "c"), (ev.ERROR, err)])
    await asyncio.wait_for(run.ended.wait(), 5)
    assert sub.tokens() == ["a", "b", "c"] and run.gen.status == "failed"
    errors = [v for k, v in sub.got if k == ev.ERROR]
    assert [e.code for e in errors] == ["upstream_error"]
    assert "close" in stream.calls  # the failed response's connection is not reused


async def test_a_cancel_while_held_ends_the_run_cancelled(gw) -> None:
    stream = PushStream(tok("a"))
    sub = Sub(slow_on="b")
    run = await start(gw, stream, sub)
    stream.sink(tok("b", "c"))
    assert stream.calls == ["push", "pause"]
    run.cancel("client_gone")
    await asyncio.wait_for(run.ended.wait(), 5)
    assert run.gen.status == "cancelled" and sub.tokens() == ["a", "b"] and "close" in stream.calls
