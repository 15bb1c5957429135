"""Each limit triggers at its number and not before, with a clear error; the socket stays open."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from eventually import aeventually
from secutil import create_key, usage
from wsutil import WS


def chat(id: str, n: int = 5, model: str = "gpt-4.1", **extra) -> dict:
    """A chat with its own message list (no shared conversation, so no ``conversation_busy``)."""
    messages = [{"role": "user", "content": "x"}]
    return {"type": "chat", "id": id, "model": model, "messages": messages, "params": {"max_tokens": n}, **extra}


async def outcome(ws: WS, id: str) -> list[dict]:
    """Events of ``id`` up to its ``end``, or the one ``error`` that refused it."""
    out = ws.backlog.pop(id, [])
    while not out or out[-1]["type"] not in ("end", "error") or (out[-1]["type"] == "error" and len(out) > 1):
        event = await ws.recv()
        if event.get("id") == id:
            out.append(event)
        else:
            ws.backlog.setdefault(event.get("id"), []).append(event)
    return out


def keyed_gateway(spawn, tmp_path, *key_opts: str, **env: str):
    db = tmp_path / "gw.db"
    key = create_key(db, "k", *key_opts)
    gw = spawn(
        "serve",
        "--port",
        "0",
        env={"TOKENWIRE_DB": str(db), "TOKENWIRE_SIMULATED_SPEED": "100", **env},
    )
    return gw, db, {"Authorization": f"Bearer {key}"}


async def still_open(ws: WS) -> None:
    await ws.send({"type": "ping", "data": "alive"})
    while True:
        event = await ws.recv()
        if event["type"] == "pong":
            assert event["data"] == "alive"
            return


async def test_requests_per_minute(spawn, tmp_path) -> None:
    gw, _db, auth = keyed_gateway(spawn, tmp_path, "--rpm", "5")
    async with await WS.connect(gw.ws, headers=auth) as ws:
        for i in range(5):
            await ws.send(chat(f"c{i}"))
            assert (await outcome(ws, f"c{i}"))[-1]["status"] == "completed"
        await ws.send(chat("c5"))
        err = await ws.recv()
        assert err["type"] == "error" and err["code"] == "rate_limited" and err["id"] == "c5"
        assert err["retryable"] is True and 10 < err["retry_after"] <= 12  # one request per 12 s comes back
        assert "5 requests per minute" in err["message"]
        await still_open(ws)
    async with aiohttp.ClientSession(headers=auth) as s:
        body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}]}
        async with s.post(gw.http + "/v1/chat/completions", json=body) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 10
            assert (await r.json())["error"]["code"] == "rate_limited"


async def test_tokens_per_minute(spawn, tmp_path) -> None:
    """Each reply reserves its prompt + max_tokens at admission; the last one is cut to what is left."""
    gw, _db, auth = keyed_gateway(spawn, tmp_path, "--tpm", "1000")
    used: list[int] = []
    ends: list[dict] = []
    t0 = time.monotonic()
    async with await WS.connect(gw.ws, headers=auth) as ws:
        for i in range(10):
            await ws.send(chat(f"c{i}", 290))
            events = await outcome(ws, f"c{i}")
            if events[-1]["type"] == "error":
                err = events[-1]
                break
            ends.append(events[-1])
            used.append(events[-1]["usage"]["total_tokens"])
        else:
            pytest.fail("the tpm limit never triggered")
        elapsed = time.monotonic() - t0
        # never more than the minute's 1000 (plus what refilled meanwhile, and the prompt estimate's rounding)
        assert sum(used) <= 1000 + elapsed * 1000 / 60 + 10, used
        assert len(used) >= 3 and all(u == used[0] for u in used[:3]), used
        assert ends[-1]["finish_reason"] == "length" and ends[-1]["limit"] == "tpm", ends[-1]
        assert ends[-1]["usage"]["completion_tokens"] < 290
        assert err["code"] == "rate_limited" and err["retry_after"] > 0 and "1000 tokens per minute" in err["message"]
        await still_open(ws)


async def test_budget_stops_within_one_request(spawn, tmp_path) -> None:
    """The reply that would pass the budget is cut to what the budget still buys; the next is refused."""
    gw, db, auth = keyed_gateway(spawn, tmp_path, "--budget-usd", "0.01")
    costs: list[float] = []
    ends: list[dict] = []
    async with await WS.connect(gw.ws, headers=auth) as ws:
        for i in range(20):
            await ws.send(chat(f"c{i}", 290))
            events = await outcome(ws, f"c{i}")
            if events[-1]["type"] == "error":
                err = events[-1]
                break
            ends.append(events[-1])
            costs.append(events[-1]["cost_usd"])
        else:
            pytest.fail("the budget never stopped spending")
        assert err["code"] == "budget_exceeded" and err["retryable"] is False
        spent = sum(costs)
        assert spent <= 0.01 and spent > 0.0099, costs  # all of the budget, never more
        assert ends[-1]["finish_reason"] == "length" and ends[-1]["limit"] == "budget"
        assert all(e["usage"]["completion_tokens"] == 290 for e in ends[:-1])
        await still_open(ws)
    row = await aeventually(
        lambda: (r := usage(db)["k"])["requests"] >= len(costs) and r,
        timeout=10,
        interval=0.05,
        message=f"usage records the {len(costs)} requests",
    )
    assert row["requests"] == len(costs) and row["cost_usd"] == pytest.approx(spent, rel=1e-6)
    assert row["completion_tokens"] == sum(e["usage"]["completion_tokens"] for e in ends)


async def test_concurrent_sockets_per_key(spawn, tmp_path) -> None:
    gw, _db, auth = keyed_gateway(spawn, tmp_path, TOKENWIRE_MAX_SOCKETS_PER_KEY="3")
    socks = [await WS.connect(gw.ws, headers=auth) for _ in range(3)]
    try:
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await s.ws_connect(gw.ws, headers=auth)
            assert info.value.status == 429
        await socks.pop().close()

        async def connect_again() -> WS | None:
            try:
                return await WS.connect(gw.ws, headers=auth)
            except aiohttp.WSServerHandshakeError as err:
                if err.status == 429:  # the gateway has not seen the close yet
                    return None
                raise

        socks.append(await aeventually(connect_again, message="the closed socket's slot is free again"))
        await still_open(socks[-1])
    finally:
        for ws in socks:
            await ws.close()


async def test_concurrent_generations_per_socket(spawn, tmp_path) -> None:
    gw, _db, auth = keyed_gateway(spawn, tmp_path, TOKENWIRE_MAX_GENERATIONS_PER_SOCKET="3")
    async with await WS.connect(gw.ws, headers=auth) as ws:
        for i in range(3):
            await ws.send(chat(f"c{i}", 2000))
        await ws.send(chat("c3", 5))
        while True:
            event = await ws.recv()
            if event["type"] == "error":
                break
            assert event["id"] in ("c0", "c1", "c2")
        assert event["code"] == "rate_limited" and event["id"] == "c3" and event["retry_after"] > 0
        await ws.send({"type": "cancel", "id": "c0"})
        await ws.until_end("c0")
        await ws.send(chat("c4", 5))
        assert (await ws.until_end("c4"))[-1]["status"] == "completed"


async def test_frames_per_second(spawn, tmp_path) -> None:
    gw, _db, auth = keyed_gateway(spawn, tmp_path, TOKENWIRE_MAX_FRAMES_PER_SECOND="20")
    async with await WS.connect(gw.ws, headers=auth) as ws:
        for i in range(30):
            await ws.send({"type": "ping", "data": i})
        pongs, errors = [], []
        for _ in range(30):
            event = await ws.recv()
            (pongs if event["type"] == "pong" else errors).append(event)
        # a burst of exactly 20 passes (the bucket refills at 20/s: one more may slip in while sending)
        assert 20 <= len(pongs) <= 21 and [p["data"] for p in pongs[:20]] == list(range(20))
        assert errors and all(e["code"] == "rate_limited" and e["retry_after"] > 0 for e in errors)
        # Stays a sleep: refilling is the behaviour under test. still_open() needs 1 frame (1/20 s of
        # refill at 20/s); 1.1 s refills the whole burst, a margin of 20x.
        await asyncio.sleep(1.1)
        await still_open(ws)


async def test_frame_size_and_messages_length(spawn, tmp_path) -> None:
    gw, _db, auth = keyed_gateway(spawn, tmp_path, TOKENWIRE_MAX_FRAME_BYTES="2048", TOKENWIRE_MAX_MESSAGES="10")
    async with await WS.connect(gw.ws, headers=auth) as ws:
        base = len(orjson.dumps({"type": "ping", "data": ""}))
        await ws.send({"type": "ping", "data": "a" * (2048 - base)})  # exactly 2048 bytes
        assert (await ws.recv())["type"] == "pong"
        await ws.send({"type": "ping", "data": "a" * (2049 - base)})
        assert (await ws.recv())["code"] == "frame_too_large"
        # bytes, not characters: 2-byte characters count twice
        await ws.send({"type": "ping", "data": "é" * ((2049 - base + 1) // 2)})
        assert (await ws.recv())["code"] == "frame_too_large"
        msgs = [{"role": "user", "content": "m"}]
        await ws.send({"type": "chat", "id": "ok", "messages": msgs * 10, "params": {"max_tokens": 3}})
        assert (await ws.until_end("ok"))[-1]["status"] == "completed"
        await ws.send({"type": "chat", "id": "big", "messages": msgs * 11})
        err = await ws.recv()
        assert err["code"] == "bad_request" and err["id"] == "big" and "the limit is 10" in err["message"]
        await still_open(ws)


async def test_per_ip_limits_without_keys(spawn, tmp_path) -> None:
    gw = spawn(
        "serve",
        "--port",
        "0",
        env={
            "TOKENWIRE_DB": ":memory:",
            "TOKENWIRE_SIMULATED_SPEED": "100",
            "TOKENWIRE_IP_RPM": "3",
            "TOKENWIRE_IP_MAX_SOCKETS": "2",
        },
    )
    async with await WS.connect(gw.ws) as a, await WS.connect(gw.ws) as b:
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await s.ws_connect(gw.ws)
            assert info.value.status == 429
        for i, ws in enumerate((a, b, a)):
            await ws.send(chat(f"c{i}"))
            assert (await outcome(ws, f"c{i}"))[-1]["status"] == "completed"
        await b.send(chat("c3"))
        err = await b.recv()
        assert err["code"] == "rate_limited" and "ip 127.0.0.1" in err["message"]
