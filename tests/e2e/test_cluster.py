"""Several real gateway processes over one real Redis: resume elsewhere, cancel routing,
graceful drain, shared conversations, and a Redis restart mid-run."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from eventually import aeventually
from procs import Proc
from redisutil import RedisServer, new_prefix
from tcpproxy import TCPProxy
from wsutil import WS, text_of

from tokenwire.simulate.reply import reply_tokens


def expected(prompt: str, n: int) -> str:
    return "".join(reply_tokens([{"role": "user", "content": prompt}], n))


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def cluster(spawn: Callable[..., Proc], sim: Proc, redis_url: str) -> Callable[..., list[Proc]]:
    """Start N gateways that share one Redis (and a key prefix of their own) and relay to ``sim``."""

    def start(n: int = 2, url: str | None = None, **extra: str) -> list[Proc]:
        env = {
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": sim.http + "/v1",
            "TOKENWIRE_REDIS_URL": url or redis_url,
            "TOKENWIRE_REDIS_PREFIX": new_prefix(),
            "TOKENWIRE_DB": ":memory:",
            **extra,
        }
        return [spawn("serve", "--port", "0", env=env) for _ in range(n)]

    return start


def chat(gid: str, prompt: str, n: int, tps: float, stream_id: str | None = None, **more: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "chat",
        "id": gid,
        "model": f"gpt-4.1@tps={tps:g}",
        "messages": [{"role": "user", "content": prompt}],
        "params": {"max_tokens": n},
        **more,
    }
    if stream_id:
        frame["stream_id"] = stream_id
    return frame


def assert_exactly_once(events: list[dict[str, Any]], prompt: str, n: int, status: str = "completed") -> None:
    assert [e["seq"] for e in events] == list(range(len(events))), "every seq once, in order"
    assert events[0]["type"] == "start" and events[-1]["type"] == "end"
    assert events[-1]["status"] == status, events[-1]
    if status == "completed":
        assert text_of(events) == expected(prompt, n)


async def sim_stats(sim: Proc) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(sim.http + "/_sim/stats") as r:
        return await r.json()


async def health(gw: Proc) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(gw.http + "/healthz") as r:
        return await r.json()


async def test_socket_cut_then_resume_on_another_instance(cluster) -> None:
    a, b = cluster(2)
    sid = uuid.uuid4().hex
    prompt, n = "resume me elsewhere", 150
    with TCPProxy(a.port) as proxy:
        ws = await WS.connect(f"ws://127.0.0.1:{proxy.port}/ws/chat")
        await ws.send(chat("c1", prompt, n, 100, sid))
        got: list[dict[str, Any]] = []
        while len(got) < 30:
            got.append(await ws.recv())
        assert proxy.drop_all() >= 1
        await ws.session.close()
    async with await WS.connect(b.ws) as ws_b:
        await ws_b.send({"type": "attach", "id": "again", "stream_id": sid, "last_seq": got[-1]["seq"]})
        rest = await ws_b.until_end("again")
    assert {e["id"] for e in rest} == {"again"}
    assert_exactly_once(got + rest, prompt, n)
    assert rest[0]["seq"] == 30, "the replay starts right after last_seq"

    # the same stream, replayed from the start on B after it ended
    async with await WS.connect(b.ws) as ws_b:
        await ws_b.send({"type": "attach", "id": "all", "stream_id": sid, "last_seq": -1})
        again = await ws_b.until_end("all")
    assert_exactly_once(again, prompt, n)

    # unknown streams are refused, not invented
    async with await WS.connect(b.ws) as ws_b:
        await ws_b.send({"type": "attach", "id": "x", "stream_id": "nosuchstream0", "last_seq": 3})
        err = await ws_b.recv()
    assert err["type"] == "error" and err["code"] == "stream_expired" and err["id"] == "x"


async def test_cancel_through_b_stops_generation_on_a(cluster, sim) -> None:
    a, b = cluster(2)
    sid = uuid.uuid4().hex
    async with await WS.connect(a.ws) as ws_a, await WS.connect(b.ws) as ws_b:
        await ws_a.send(chat("orig", "cancel me from afar", 2000, 50, sid))
        first = [await ws_a.recv() for _ in range(3)]
        assert first[0]["type"] == "start"
        await ws_b.send({"type": "attach", "id": "far", "stream_id": sid, "last_seq": -1})
        seen = []
        while len([e for e in seen if e["type"] == "token"]) < 5:
            seen.append(await ws_b.recv())
        stats = await sim_stats(sim)
        assert stats["active"] == 1 and stats["aborted"] == 0
        t_cancel = time.monotonic()
        await ws_b.send({"type": "cancel", "id": "far"})
        seen += await ws_b.until_end("far", timeout=10)
        on_a = first + await ws_a.until_end("orig", timeout=10)
    end = seen[-1]
    assert end["status"] == "cancelled" and end["reason"] == "cancelled"
    assert on_a[-1]["status"] == "cancelled" and on_a[-1]["seq"] == end["seq"]
    assert [e["seq"] for e in seen] == list(range(len(seen)))
    assert end["usage"]["completion_tokens"] < 2000

    async def upstream_idle() -> dict[str, Any] | None:
        stats = await sim_stats(sim)
        return stats if stats["active"] == 0 else None

    stats = await aeventually(upstream_idle, interval=0.05, message="the upstream request was closed")
    assert stats["aborted"] == 1 and stats["active"] == 0, stats
    assert stats["last_abort_monotonic"] is not None
    assert time.monotonic() - t_cancel < 5


async def test_pause_and_resume_through_b(cluster) -> None:
    a, b = cluster(2)
    sid = uuid.uuid4().hex
    prompt, n = "pause me from afar", 200
    async with await WS.connect(a.ws) as ws_a, await WS.connect(b.ws) as ws_b:
        await ws_a.send(chat("orig", prompt, n, 100, sid))
        assert (await ws_a.recv())["type"] == "start"
        await ws_b.send({"type": "attach", "id": "far", "stream_id": sid, "last_seq": -1})
        on_b = [await ws_b.recv() for _ in range(10)]
        await ws_b.send({"type": "pause", "id": "far"})
        # in flight: up to a flush interval (10 ms) and a round trip; then silence (0.3 s without a frame)
        while True:
            try:
                on_b.append(await ws_b.recv(timeout=0.3))
            except TimeoutError:
                break
        held = len(on_b)
        # Stays a sleep: silence can only be shown by waiting. At 100 tokens/s one would come every 10 ms;
        # 1.2 s of silence in all is 120 times that.
        await asyncio.sleep(1.0)
        with pytest.raises(TimeoutError):
            await ws_b.recv(timeout=0.2)
        assert on_b[-1]["type"] == "token" and held < n
        await ws_b.send({"type": "resume", "id": "far"})
        on_b += await ws_b.until_end("far", timeout=20)
        on_a = await ws_a.until_end("orig", timeout=20)
    assert_exactly_once(on_b, prompt, n)
    assert on_a[-1]["seq"] == on_b[-1]["seq"]


async def _client_that_moves(
    a: Proc, b: Proc, gid: str, prompt: str, n: int, sid: str, started: asyncio.Event | None = None
) -> tuple[list[dict[str, Any]], list[int]]:
    """A client that follows the protocol: on close 4001, reconnect to B and attach."""
    events: list[dict[str, Any]] = []
    closes: list[int] = []
    url = a.ws
    async with aiohttp.ClientSession() as session:
        for attempt in range(5):
            async with session.ws_connect(url) as ws:
                if attempt == 0:
                    await ws.send_str(orjson.dumps(chat(gid, prompt, n, 40, sid)).decode())
                else:
                    last = events[-1]["seq"] if events else -1
                    await ws.send_str(
                        orjson.dumps({"type": "attach", "id": gid, "stream_id": sid, "last_seq": last}).decode()
                    )
                while True:
                    msg = await ws.receive(timeout=30)
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        event = orjson.loads(msg.data)
                        assert event["type"] != "error", event
                        events.append(event)
                        if started is not None and event["type"] == "token":
                            started.set()
                        if event["type"] == "end":
                            return events, closes
                    else:
                        closes.append(ws.close_code or 0)
                        break
            url = b.ws
    raise AssertionError(f"{gid}: no end after 5 connections (closes {closes})")


async def test_sigterm_drain_moves_50_streams_to_another_instance(cluster) -> None:
    a, b = cluster(2, TOKENWIRE_DRAIN_TIMEOUT="30")
    prompts = {f"s{i}": f"drain stream number {i}" for i in range(50)}
    n = 120  # ~3 s each at 40 tokens/s
    ready = [asyncio.Event() for _ in prompts]
    tasks = [
        asyncio.create_task(_client_that_moves(a, b, gid, p, n, uuid.uuid4().hex, ready[i]))
        for i, (gid, p) in enumerate(prompts.items())
    ]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 20)  # every stream is mid-reply
    a.popen.send_signal(signal.SIGTERM)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    moved = 0
    for prompt, (events, closes) in zip(prompts.values(), results, strict=True):
        assert_exactly_once(events, prompt, n)
        assert closes in ([], [4001]), closes
        moved += closes == [4001]
    assert moved >= 45, f"only {moved} of 50 streams were still running at SIGTERM"
    assert a.popen.wait(30) == 0, a.text()
    assert "draining" in a.text()


async def test_conversation_started_on_a_continues_on_b(cluster, sim) -> None:
    a, b = cluster(2)
    conv = "conv-" + uuid.uuid4().hex[:8]
    async with await WS.connect(a.ws) as ws:
        await ws.send(
            {
                "type": "chat",
                "id": "1",
                "model": "gpt-4.1@tps=0",
                "conversation_id": conv,
                "system": "Be brief.",
                "content": "Plan a trip",
                "params": {"max_tokens": 8},
            }
        )
        first = await ws.until_end("1")
    async with await WS.connect(b.ws) as ws:
        await ws.send(
            {
                "type": "chat",
                "id": "2",
                "model": "gpt-4.1@tps=0",
                "conversation_id": conv,
                "system": "Be brief.",
                "content": "Cheaper?",
                "params": {"max_tokens": 8},
            }
        )
        second = await ws.until_end("2")
    assert second[-1]["status"] == "completed"
    async with aiohttp.ClientSession() as s:
        async with s.get(sim.http + "/_sim/requests") as r:
            bodies = await r.json()
        async with s.get(a.http + f"/v1/conversations/{conv}") as r:
            stored = (await r.json())["messages"]
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Plan a trip"},
        {"role": "assistant", "content": text_of(first)},
        {"role": "user", "content": "Cheaper?"},
    ]
    assert bodies[-1]["messages"] == history
    assert stored == [*history, {"role": "assistant", "content": text_of(second)}]

    # one reply at a time per conversation, across instances
    async with await WS.connect(a.ws) as ws_a, await WS.connect(b.ws) as ws_b:
        await ws_a.send(
            {
                "type": "chat",
                "id": "long",
                "model": "gpt-4.1@tps=50",
                "conversation_id": conv,
                "content": "A long one",
                "params": {"max_tokens": 100},
            }
        )
        assert (await ws_a.recv())["type"] == "start"
        await ws_b.send(
            {"type": "chat", "id": "busy", "model": "gpt-4.1@tps=0", "conversation_id": conv, "content": "Me too"}
        )
        err = await ws_b.recv()
        assert err["type"] == "error" and err["code"] == "conversation_busy" and err["id"] == "busy"
        assert err["retryable"] is True
        await ws_a.send({"type": "cancel", "id": "long"})
        await ws_a.until_end("long")
        # freed at the end: B may go on at once
        await ws_b.send(
            {
                "type": "chat",
                "id": "next",
                "model": "gpt-4.1@tps=0",
                "conversation_id": conv,
                "content": "Now me",
                "params": {"max_tokens": 4},
            }
        )
        assert (await ws_b.until_end("next"))[-1]["status"] == "completed"


async def test_redis_restart_mid_run(cluster, private_redis) -> None:
    a, b = cluster(2, url=private_redis.url, TOKENWIRE_REDIS_TIMEOUT="0.5")
    sid = uuid.uuid4().hex
    prompt, n = "survive a redis restart", 240  # ~6 s at 40 tokens/s
    ws_a = await WS.connect(a.ws)
    ws_b = await WS.connect(b.ws)
    try:
        await ws_a.send(chat("own", prompt, n, 40, sid))
        on_a = [await ws_a.recv() for _ in range(5)]
        await ws_b.send({"type": "attach", "id": "follow", "stream_id": sid, "last_seq": -1})
        on_b = [await ws_b.recv() for _ in range(5)]

        private_redis.kill()
        t_down = time.monotonic()

        # the fault is reported clearly, and quickly
        async def redis_down() -> dict[str, Any] | None:
            h = await health(a)
            return h if h["redis"]["ok"] is False else None

        h = await aeventually(redis_down, interval=0.05, message="A reports Redis down")
        assert h["status"] == "degraded" and h["redis"]["error"], h
        # a resumable chat now needs Redis: a clear, retryable error, not a hang
        t0 = time.monotonic()
        await ws_b.send(chat("new", "during the outage", 5, 0, uuid.uuid4().hex))
        err = await ws_b.recv(timeout=10)
        while err.get("id") != "new":
            on_b.append(err)
            err = await ws_b.recv(timeout=10)
        assert err["type"] == "error" and err["code"] == "store_unavailable" and err["retryable"] is True, err
        assert "Redis" in err["message"]
        assert time.monotonic() - t0 < 5
        # and an attach as well
        async with await WS.connect(b.ws) as ws_c:
            await ws_c.send({"type": "attach", "id": "late", "stream_id": sid, "last_seq": 3})
            err = await ws_c.recv(timeout=10)
        assert err["code"] == "store_unavailable" and err["id"] == "late", err

        # Stays a sleep: the outage's length is part of the test: 2 s down, 4x the 0.5 s Redis time-out.
        await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - t_down)))
        private_redis.start()  # same port, empty: every key was lost
        on_a += await ws_a.until_end("own", timeout=30)
        on_b += await ws_b.until_end("follow", timeout=30)
    finally:
        await ws_a.close()
        await ws_b.close()
    # the instance running it never noticed; the follower lost nothing and got nothing twice
    assert_exactly_once(on_a, prompt, n)
    assert_exactly_once(on_b, prompt, n)
    # the log was written again from memory after the restart: a full replay works
    async with await WS.connect(b.ws) as ws:
        await ws.send({"type": "attach", "id": "replay", "stream_id": sid, "last_seq": -1})
        replay = await ws.until_end("replay")
    assert_exactly_once(replay, prompt, n)
    for gw in (a, b):

        async def redis_back(gw: Proc = gw) -> dict[str, Any] | None:
            h = await health(gw)
            return h if h["redis"]["ok"] else None

        h = await aeventually(redis_back, interval=0.05, message="Redis reported back")
        assert h["status"] == "ok" and h["redis"]["ok"] and h["redis"]["faults"] > 0, h

        async def control_back(gw: Proc = gw) -> dict[str, Any] | None:
            h = await health(gw)
            return h if h["redis"]["control"] else None

        h = await aeventually(control_back, interval=0.05, message="the control channel is subscribed again")
        assert h["redis"]["control"], "the control channel is subscribed again"


async def test_lost_log_is_refused_not_replayed(cluster, redis_url) -> None:
    """Events trimmed from the middle of a log: the answer is stream_expired, never a gap."""
    import redis.asyncio as aioredis

    a, b = cluster(2)
    sid = uuid.uuid4().hex
    async with await WS.connect(a.ws) as ws:
        await ws.send(chat("c", "trim me", 40, 100, sid))  # paced: the log holds several batches
        events = await ws.until_end("c")
    assert_exactly_once(events, "trim me", 40)
    prefix = None
    r = aioredis.Redis.from_url(redis_url)
    try:
        async for key in r.scan_iter(match=f"*:s:{sid}"):
            prefix = key
        assert prefix is not None
        entries = await r.xrange(prefix)
        assert len(entries) > 2
        await r.xdel(prefix, entries[0][0])  # the oldest batch is gone
        async with await WS.connect(b.ws) as ws:
            await ws.send({"type": "attach", "id": "x", "stream_id": sid, "last_seq": -1})
            err = await ws.recv()
            assert err["type"] == "error" and err["code"] == "stream_expired" and err["id"] == "x", err
            await ws.send({"type": "attach", "id": "y", "stream_id": sid, "last_seq": 38})
            tail = await ws.until_end("y")
            assert [e["seq"] for e in tail] == [39, 40, 41]
            await r.xtrim(prefix, maxlen=0)  # every event gone, the stream known to have ended
            await ws.send({"type": "attach", "id": "z", "stream_id": sid, "last_seq": 38})
            err = await ws.recv()
            assert err["code"] == "stream_expired" and err["id"] == "z", err
    finally:
        await r.aclose()


async def test_attach_on_another_instance_needs_the_same_key(cluster, tmp_path) -> None:
    """The owning key travels with the stream's record: another key is refused on any instance."""
    from secutil import create_key

    db = tmp_path / "keys.db"
    alice, bob = create_key(db, "alice"), create_key(db, "bob")
    a, b = cluster(2, TOKENWIRE_DB=str(db))
    sid = uuid.uuid4().hex
    hdr = {"Authorization": f"Bearer {alice}"}
    async with await WS.connect(a.ws, headers=hdr) as ws_a:
        await ws_a.send(chat("c1", "keyed", 60, 50, sid))
        first = [await ws_a.recv() for _ in range(5)]
        async with await WS.connect(b.ws, headers={"Authorization": f"Bearer {bob}"}) as ws_bob:
            await ws_bob.send({"type": "attach", "id": "steal", "stream_id": sid, "last_seq": 4})
            refused = await ws_bob.recv()
        async with await WS.connect(b.ws, headers=hdr) as ws_alice_b:
            await ws_alice_b.send({"type": "attach", "id": "mine", "stream_id": sid, "last_seq": 4})
            rest = await ws_alice_b.until_end("mine")
    # the answer for an unknown id: another key's ids are not revealed
    assert refused["type"] == "error" and refused["code"] == "stream_expired", refused
    assert first[0]["type"] == "start"
    assert_exactly_once(first + rest, "keyed", 60)


async def test_a_cancel_sent_while_redis_is_down_lands_when_it_is_back(cluster, private_redis) -> None:
    a, b = cluster(2, url=private_redis.url, TOKENWIRE_REDIS_TIMEOUT="0.5")
    sid = uuid.uuid4().hex
    ws_a = await WS.connect(a.ws)
    ws_b = await WS.connect(b.ws)
    try:
        await ws_a.send(chat("own", "cancel me through an outage", 2000, 20, sid))
        on_a = [await ws_a.recv() for _ in range(3)]
        await ws_b.send({"type": "attach", "id": "far", "stream_id": sid, "last_seq": -1})
        assert (await ws_b.recv())["type"] == "start"
        private_redis.kill()

        async def b_sees_redis_down() -> bool:
            return (await health(b))["redis"]["ok"] is False

        await aeventually(b_sees_redis_down, interval=0.05, message="B reports Redis down")
        await ws_b.send({"type": "cancel", "id": "far"})  # B cannot reach Redis now
        # Stays a sleep: the cancel must wait out an outage; 1.5 s is 3x the 0.5 s Redis time-out.
        await asyncio.sleep(1.5)
        private_redis.start()  # the cancel is re-sent until A, subscribed again, takes it
        t_back = time.monotonic()
        on_a += await ws_a.until_end("own", timeout=30)
    finally:
        await ws_a.close()
        await ws_b.close()
    end = on_a[-1]
    assert end["type"] == "end" and end["status"] == "cancelled" and end["reason"] == "cancelled", end
    assert time.monotonic() - t_back < 10
    tokens = [e for e in on_a if e["type"] == "token"]
    assert len(tokens) < 2000 * 0.1, "stopped early, not run to its end"
