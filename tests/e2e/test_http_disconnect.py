"""A client that leaves an HTTP request stops its generation upstream, on every HTTP entry path."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from eventually import aeventually


async def sim_stats(sim) -> dict:
    async with aiohttp.ClientSession() as s, s.get(sim.http + "/_sim/stats") as r:
        return await r.json()


@pytest.mark.parametrize(
    ("path", "stream"),
    [("/v1/chat/completions", False), ("/v1/chat/completions", True), ("/v1/responses", True)],
    ids=["json", "sse-before-first-token", "responses-sse-before-first-token"],
)
async def test_leaving_a_request_closes_the_upstream_within_100ms(relay, sim, path: str, stream: bool) -> None:
    # a long reply; streamed, a slow first token (nothing is written to the client before it)
    model = "gpt-4.1@tps=20@tokens=2000" + ("@ttft=20000" if stream else "")
    if path == "/v1/responses":
        body = {"model": model, "input": "long", "stream": True, "store": False}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": "long"}], "stream": stream}
    _reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    data = orjson.dumps(body)
    writer.write(
        b"POST %b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (path.encode(), len(data), data)
    )
    await writer.drain()
    await aeventually(lambda: _active(sim), timeout=10, message="the upstream request never started")
    before = await sim_stats(sim)
    t = time.monotonic()
    writer.close()  # the client leaves
    await aeventually(lambda: _aborted(sim, before), timeout=5, message="the upstream never saw its request end")
    delay = (await sim_stats(sim))["last_abort_monotonic"] - t
    assert delay < 0.1, f"upstream closed {delay * 1000:.1f} ms after the client left"
    assert (await sim_stats(sim))["completed"] == before["completed"]


async def _active(sim) -> bool:
    return (await sim_stats(sim))["active"] == 1


async def _aborted(sim, before: dict) -> bool:
    return (await sim_stats(sim))["aborted"] > before["aborted"]
