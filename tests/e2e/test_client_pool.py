"""ClientPool against a real gateway: bounded sockets, FIFO, timeouts, idle reaping, broken clients."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from eventually import aeventually
from tcpproxy import TCPProxy

import tokenwire
from tokenwire.simulate.reply import reply_tokens


def text(prompt: str, n: int) -> str:
    return "".join(reply_tokens([{"role": "user", "content": prompt}], n))


async def test_pool_200_concurrent_requests_max_10_sockets_fifo(gateway) -> None:
    server_sockets: list[int] = []
    stop = asyncio.Event()

    async def watch() -> None:  # the gateway's own count of open sockets
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                async with http.get(gateway.http + "/healthz") as r:
                    server_sockets.append((await r.json())["sockets"])
                await asyncio.sleep(0.01)  # a sampler (its rate), not a wait for something

    watcher = asyncio.create_task(watch())
    order: list[int] = []
    async with tokenwire.ClientPool(gateway.ws, min_size=2, max_size=10, acquire_timeout=30) as pool:
        assert pool.metrics["size"] == 2  # min_size opened up front

        async def request(i: int) -> str:
            if i % 2:  # half through acquire(), half through the stream() shortcut
                async with pool.acquire() as client:
                    order.append(i)
                    return (await client.complete(f"req {i}", model="deepseek-v3.2", max_tokens=12)).text
            out = []
            async for t in pool.stream(f"req {i}", model="deepseek-v3.2", max_tokens=12):
                out.append(t)
            return "".join(out)

        tasks = []
        for i in range(200):
            tasks.append(asyncio.create_task(request(i)))
        async with asyncio.timeout(60):
            results = await asyncio.gather(*tasks)
        m = pool.metrics
        assert results == [text(f"req {i}", 12) for i in range(200)]
        assert m["requests"] == 200 and m["errors"] == 0 and m["active"] == 0 and m["waiting"] == 0
        assert m["peak_size"] == 10 and m["size"] <= 10
        assert m["connects"] == 10 and m["mean_connect_ms"] > 0
        stop.set()
        await watcher
        assert max(server_sockets) <= 10 and max(server_sockets) >= 5
    # FIFO: once all 10 were busy, acquire() callers got a connection in arrival order
    waited = [i for i in order if i >= 20]
    assert waited == sorted(waited) and len(waited) == 90


async def test_pool_acquire_timeout_and_release_only_after_stream_end(gateway) -> None:
    async with tokenwire.ClientPool(gateway.ws, min_size=0, max_size=1, acquire_timeout=0.3) as pool:
        stream = pool.stream("long one", max_tokens=200)
        first = await asyncio.wait_for(stream.__anext__(), 5)
        assert pool.metrics["active"] == 1  # held while the reply runs
        with pytest.raises(tokenwire.PoolTimeoutError) as info:
            await pool.complete("must wait")
        assert info.value.code == "pool_timeout" and pool.metrics["errors"] == 1
        waiting = asyncio.create_task(pool.complete("queued", max_tokens=5))
        await aeventually(lambda: pool.metrics["waiting"], message="the second caller queues")
        assert pool.metrics["waiting"] == 1
        rest = [t async for t in stream]  # the connection is handed on only now
        assert "".join([first, *rest]) == text("long one", 200)
        assert (await asyncio.wait_for(waiting, 5)).text == text("queued", 5)
        assert pool.metrics["active"] == 0 and pool.metrics["size"] == 1


async def test_pool_closes_idle_connections_down_to_min(gateway) -> None:
    async with tokenwire.ClientPool(gateway.ws, min_size=1, max_size=6, idle_timeout=0.3) as pool:
        async with asyncio.timeout(10):
            await asyncio.gather(*(pool.complete(f"burst {i}", max_tokens=30) for i in range(6)))
        assert pool.metrics["size"] == 6 and pool.metrics["idle"] == 6
        # the reaper runs on a timer
        await aeventually(lambda: pool.metrics["size"] <= 1, interval=0.05, message="idle connections closed to min")
        assert pool.metrics["size"] == 1
        assert pool.metrics["idle"] == 1


async def test_pool_replaces_broken_connection(gateway) -> None:
    with TCPProxy(gateway.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/ws/chat"
        async with tokenwire.ClientPool(url, min_size=1, max_size=1, max_attempts=1, backoff_base=0.01) as pool:
            proxy.refuse = True
            with pytest.raises(tokenwire.ConnectionLostError):
                async with asyncio.timeout(10):
                    async for t in pool.stream("doomed", max_tokens=500):
                        if t:
                            proxy.drop_all()
            assert pool.metrics["size"] == 0  # the broken client was dropped, not pooled
            proxy.refuse = False
            r = await asyncio.wait_for(pool.complete("fresh", max_tokens=5), 10)
            assert r.text == text("fresh", 5) and pool.metrics["size"] == 1
