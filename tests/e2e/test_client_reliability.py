"""Reconnect + resume, heartbeat and backpressure against real gateway processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from eventually import aeventually
from tcpproxy import TCPProxy

import tokenwire
from tokenwire.simulate.reply import reply_tokens


def expected(prompt: str, n: int | None) -> list[str]:
    return reply_tokens([{"role": "user", "content": prompt}], n)


async def test_reconnect_after_socket_killed_mid_stream_resumes_exactly_once(gateway) -> None:
    prompt = "resume after a cut"
    want = expected(prompt, 600)
    with TCPProxy(gateway.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/ws/chat"
        async with tokenwire.AsyncClient(url, backoff_base=0.05, heartbeat_interval=5) as client:
            got: list[str] = []
            cuts = 0
            async with asyncio.timeout(30):
                stream = client.stream(prompt, model="gpt-4.1", max_tokens=600)
                async for token in stream:
                    got.append(token)
                    if len(got) in (40, 250, 251):  # 251: cut again before the resume settled
                        cuts += proxy.drop_all()
            assert cuts >= 2
            assert got == want  # every token once, in order, nothing lost
            assert client.stats["reconnects"] >= 2
            assert proxy.connections >= 3
            r = stream.result
            assert r.status == "completed" and r.text == "".join(want) and r.tokens == 600


async def test_concurrent_streams_all_resume_after_cut(gateway) -> None:
    # 1,500 tokens a stream (~2 s at the fixture's speed): the cut at the 200th token seen must
    # land while the streams still run, even when this test's reader lags far behind the socket
    # (a 300-token reply could be all buffered in the client by then, and nothing would resume).
    n = 1500
    with TCPProxy(gateway.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/ws/chat"
        async with tokenwire.AsyncClient(url, backoff_base=0.05) as client:
            seen = 0
            cuts: list[int] = []

            async def one(i: int) -> list[str]:
                nonlocal seen
                out = []
                async for t in client.stream(f"multiplexed {i}", model="deepseek-v3.2", max_tokens=n):
                    out.append(t)
                    seen += 1
                    if seen == 200:
                        cuts.append(proxy.drop_all())
                return out

            async with asyncio.timeout(30):
                results = await asyncio.gather(*(one(i) for i in range(5)))
            assert cuts == [1]  # one socket carried all five, and it was cut
            assert client.stats["reconnects"] == 1
            assert proxy.connections == 2  # all five shared one socket, then one more
            for i, got in enumerate(results):
                assert got == expected(f"multiplexed {i}", n)


async def test_resume_past_retention_is_a_clear_error(spawn, tmp_path) -> None:
    gw = spawn(
        "serve",
        "--port",
        "0",
        env={
            "TOKENWIRE_DB": str(tmp_path / "r.db"),
            "TOKENWIRE_SIMULATED_SPEED": "20",
            "TOKENWIRE_RESUME_RETENTION": "0",
        },
    )
    with TCPProxy(gw.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/ws/chat"
        async with tokenwire.AsyncClient(url, backoff_base=0.2) as client:
            got: list[str] = []
            with pytest.raises(tokenwire.StreamExpiredError) as info:
                async with asyncio.timeout(20):
                    async for token in client.stream("expire me", max_tokens=2000):
                        got.append(token)
                        if len(got) == 20:
                            proxy.drop_all()
            assert info.value.code == "stream_expired" and not info.value.retryable
            assert got == expected("expire me", 2000)[: len(got)]  # no silent gap before the error


async def test_heartbeat_detects_a_frozen_gateway_then_resumes(gateway) -> None:
    interval, timeout = 0.6, 0.4
    prompt = "freeze the gateway"
    want = expected(prompt, 1500)
    async with tokenwire.AsyncClient(
        gateway.ws, heartbeat_interval=interval, heartbeat_timeout=timeout, backoff_base=0.05, connect_timeout=5
    ) as client:
        got: list[str] = []
        frozen_at = 0.0
        stream = client.stream(prompt, model="gpt-4.1", max_tokens=1500)
        try:
            async with asyncio.timeout(30):
                async for token in stream:
                    got.append(token)
                    if len(got) == 30:
                        os.kill(gateway.pid, signal.SIGSTOP)  # alive TCP, no answers: only a heartbeat sees it
                        frozen_at = time.monotonic()
                        await aeventually(
                            lambda: client.stats["heartbeat_timeouts"] >= 1,
                            timeout=interval + timeout + 2,
                            message="the heartbeat notices the frozen gateway",
                        )
                        reason, _code, detected_at = client.stats["last_disconnect"]
                        assert reason == "heartbeat"
                        # the last frame came before the freeze, so detection is due by interval + timeout
                        assert detected_at - frozen_at <= interval + timeout + 0.25
                        assert detected_at - frozen_at >= timeout - 0.05
                        os.kill(gateway.pid, signal.SIGCONT)
        finally:
            os.kill(gateway.pid, signal.SIGCONT)
        assert got == want  # and the reply resumed after the gateway came back
        assert client.stats["reconnects"] == 1


@pytest.mark.parametrize("max_buffer", [None, 20])
async def test_slow_consumer_bounded_buffer_pause_resume_no_loss(relay, max_buffer) -> None:
    """Producer 200 tokens/s, consumer 20 tokens/s (10x slower).

    At 2000 tokens/s the whole reply (120 tokens) was sent within 60 ms, so a second water-mark
    cycle needed the first ``pause`` to reach the gateway inside that window: on a loaded machine
    it once did not (one pause). At 200 tokens/s the reply takes 0.6 s, ten times the window.
    """
    n = 120
    high, low = 20, 5
    async with tokenwire.AsyncClient(relay.ws, high_water=high, low_water=low, max_buffer=max_buffer) as client:
        got: list[str] = []
        stream = client.stream("slow reader", model=f"gpt-4.1@tokens={n}@tps=200@ttft=0", max_tokens=n)
        async with asyncio.timeout(40):
            async for token in stream:
                got.append(token)
                await asyncio.sleep(0.05)  # the behaviour under test: a consumer reading at 20 tokens/s
        stats = stream.stats
        assert got == expected("slow reader", n)
        assert stats["pauses"] >= 2 and stats["resumes"] >= 2  # several water-mark cycles
        limit = client.max_buffer
        assert stats["max_buffered"] <= limit
        if max_buffer is not None:
            assert stats["max_buffered"] <= high  # the literal high-water bound
        assert stream.result.status == "completed"


async def test_server_honours_pause_for_one_generation_only(gateway) -> None:
    """While one stream is paused (its consumer stalls), another on the same socket flows."""
    async with tokenwire.AsyncClient(gateway.ws, high_water=10, low_water=2) as client:
        slow = client.stream("stalled", model="deepseek-v3.2", max_tokens=400)
        first = await asyncio.wait_for(slow.__anext__(), 5)
        await aeventually(lambda: slow.stats["pauses"] == 1, message="the stalled stream pauses")
        buffered = slow.stats["buffered"]
        async with asyncio.timeout(10):
            fast = await client.complete("flowing", model="deepseek-v3.2", max_tokens=200)
        assert fast.text == "".join(expected("flowing", 200))
        # the server holds the paused generation: nothing more arrives while it stays paused
        held = slow.stats["buffered"]
        assert buffered <= held <= client.max_buffer
        # Stays a sleep: "nothing arrives" can only be shown by waiting. Unpaused, this model's tokens
        # come every ~0.7 ms (71/s at 20x speed): 0.5 s is hundreds of times what one token needs.
        await asyncio.sleep(0.5)
        assert slow.stats["buffered"] == held
        async with asyncio.timeout(10):
            rest = [t async for t in slow]
        assert [first, *rest] == expected("stalled", 400)
