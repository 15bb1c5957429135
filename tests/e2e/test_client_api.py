"""The client API against real gateway processes: results, conversations, multiplexing,
cancellation and typed errors."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from eventually import aeventually
from tcpproxy import TCPProxy

import tokenwire
from tokenwire.simulate.reply import reply_tokens


def text(prompt: str, n: int | None) -> str:
    return "".join(reply_tokens([{"role": "user", "content": prompt}], n))


async def healthz(gateway) -> dict:
    async with aiohttp.ClientSession() as http, http.get(gateway.http + "/healthz") as r:
        return await r.json()


async def until_no_generations(gateway, within: float = 3.0) -> None:
    async def idle() -> bool:
        return not (await healthz(gateway))["generations"]

    await aeventually(idle, timeout=within, interval=0.02, message="no generation left running on the gateway")


async def test_complete_returns_text_usage_timing_cost(gateway) -> None:
    async with tokenwire.AsyncClient(gateway.ws, model="gpt-4.1") as client:
        r = await asyncio.wait_for(client.complete("what is a socket?", max_tokens=25), 10)
    assert r.text == text("what is a socket?", 25)
    assert (r.status, r.finish_reason, r.model, r.provider) == ("completed", "stop", "gpt-4.1", "simulated")
    assert r.tokens == 25 and r.usage["prompt_tokens"] > 0
    assert set(r.timing) >= {"ttft_ms", "tokens_per_s", "total_ms"} and r.timing["tokens_per_s"] > 0
    assert r.cost_usd is not None and r.cost_usd > 0
    assert r.client_ttft_ms is not None and r.client_ttft_ms > 0
    assert len(r.stream_id) == 32  # the client's own random, resumable handle


async def test_messages_list_and_system_prompt(gateway) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    async with tokenwire.AsyncClient(gateway.ws) as client:
        r = await asyncio.wait_for(client.complete(messages, system="be brief", max_tokens=6), 10)
    assert r.text == "".join(reply_tokens(messages, 6))


async def test_conversation_keeps_history_server_side(gateway) -> None:
    async with tokenwire.AsyncClient(gateway.ws) as client:
        conv = client.conversation(system="You are terse.")
        async with asyncio.timeout(10):
            a = await conv.complete("turn one", max_tokens=5)
            b = await conv.complete("turn two", max_tokens=5)
        assert a.conversation_id == b.conversation_id == conv.id
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.http}/v1/conversations/{conv.id}") as resp:
            stored = (await resp.json())["messages"]
    assert [(m["role"], m["content"]) for m in stored] == [
        ("system", "You are terse."),  # stored once, not per turn
        ("user", "turn one"),
        ("assistant", a.text),
        ("user", "turn two"),
        ("assistant", b.text),
    ]
    assert a.text == text("turn one", 5)


async def test_concurrent_streams_share_one_socket(gateway) -> None:
    with TCPProxy(gateway.port) as proxy:
        async with tokenwire.AsyncClient(f"ws://127.0.0.1:{proxy.port}/ws/chat") as client:

            async def one(i: int) -> str:
                return "".join([t async for t in client.stream(f"mux {i}", model="deepseek-v3.2", max_tokens=40)])

            async with asyncio.timeout(15):
                results = await asyncio.gather(*(one(i) for i in range(10)))
        assert proxy.connections == 1
    assert results == [text(f"mux {i}", 40) for i in range(10)]
    # They really ran at the same time, not one after another: every generation began before any
    # ended, by the gateway's own event log (the order the client's consumers wake in is not
    # evidence: one busy read can hand a stream all its tokens at once).
    spans = await aeventually(lambda: _generation_spans(gateway, 10))
    assert max(start for start, _ in spans) < min(end for _, end in spans)


def _generation_spans(gateway, n: int) -> list[tuple[float, float]] | None:
    """(start, end) in seconds of each ``generation`` line the gateway logged, once there are ``n``."""
    spans = []
    for line in gateway.text().splitlines():
        if '"event":"generation"' in line:
            event = json.loads(line)
            spans.append((event["ts"] - event["timing"]["total_ms"] / 1000, event["ts"]))
    assert len(spans) <= n
    return spans if len(spans) == n else None


async def test_leaving_the_loop_early_cancels_on_the_server(gateway) -> None:
    async with tokenwire.AsyncClient(gateway.ws) as client:
        got = []
        async for t in client.stream("long", max_tokens=20000):  # ~24 s of tokens at 20x
            got.append(t)
            if len(got) == 3:
                break
        await until_no_generations(gateway)
        assert client.active == 0
        # the socket is still fine for the next request
        r = await asyncio.wait_for(client.complete("after", max_tokens=4), 10)
        assert r.text == text("after", 4)


async def test_cancelling_the_task_cancels_on_the_server(gateway) -> None:
    async with tokenwire.AsyncClient(gateway.ws) as client:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in client.stream("long", max_tokens=20000):
                started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 10)
        assert (await healthz(gateway))["generations"] == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until_no_generations(gateway)
        assert client.active == 0


async def test_aclose_cancels_and_other_streams_continue(gateway) -> None:
    async with tokenwire.AsyncClient(gateway.ws) as client:
        keep = client.stream("keep going", max_tokens=60)
        drop = client.stream("drop me", max_tokens=20000)
        first = await asyncio.wait_for(drop.__anext__(), 10)
        assert first == "You"
        await drop.aclose()
        assert [t async for t in drop] == []
        async with asyncio.timeout(10):
            assert "".join([t async for t in keep]) == text("keep going", 60)
        await until_no_generations(gateway)


async def test_gateway_errors_are_typed(gateway) -> None:
    async with tokenwire.AsyncClient(gateway.ws) as client, asyncio.timeout(10):
        with pytest.raises(tokenwire.BadRequestError) as info:
            await client.complete("x", model="no-such-model")
        assert info.value.code == "unknown_model" and "gpt-4.1" in info.value.message
        assert not info.value.retryable
        with pytest.raises(tokenwire.BadRequestError) as info:
            await client.complete("x", params={"bogus": 1})
        assert info.value.code == "bad_request"
        assert (await client.complete("still usable", max_tokens=3)).text == text("still usable", 3)


@pytest.mark.parametrize(
    ("fault", "cls", "code", "retryable"),
    [
        ("429", tokenwire.RateLimitError, "upstream_rate_limited", True),
        ("500", tokenwire.UpstreamError, "upstream_error", True),
        ("cut:5", tokenwire.UpstreamError, "upstream_error", True),
    ],
)
async def test_upstream_errors_are_typed(relay, fault, cls, code, retryable) -> None:
    async with tokenwire.AsyncClient(relay.ws) as client:
        got: list[str] = []
        with pytest.raises(cls) as info:
            async with asyncio.timeout(15):
                async for t in client.stream("fail", model=f"gpt-4.1@fault={fault}@tps=500", max_tokens=50):
                    got.append(t)
        err = info.value
        assert (err.code, err.retryable) == (code, retryable)
        assert err.message
        if fault == "cut:5":
            assert "".join(got) == text("fail", 50)[: len("".join(got))] and len(got) == 5
        else:
            assert got == [] and err.details.get("upstream_status") == int(fault)


def test_sync_client(gateway) -> None:
    with tokenwire.Client(gateway.ws, model="gemini-2.5-flash") as client:
        tokens = list(client.stream("sync hello", max_tokens=10))
        assert "".join(tokens) == text("sync hello", 10)
        r = client.complete("sync complete", max_tokens=4)
        assert r.text == text("sync complete", 4) and r.model == "gemini-2.5-flash"
        conv = client.conversation(system="s")
        assert conv.complete("one", max_tokens=3).conversation_id == conv.id
        with pytest.raises(tokenwire.BadRequestError):
            client.complete("x", model="nope")
