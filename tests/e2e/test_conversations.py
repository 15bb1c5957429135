"""Server-side conversations: history sent upstream correctly, and kept across a restart."""

from __future__ import annotations

import aiohttp
from wsutil import WS, text_of


async def test_conversation_survives_restart(spawn, sim, tmp_path) -> None:
    db = str(tmp_path / "conv.db")
    env = {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": sim.http + "/v1", "TOKENWIRE_DB": db}
    gw = spawn("serve", "--port", "0", env=env)
    async with await WS.connect(gw.ws) as ws:
        await ws.send(
            {
                "type": "chat",
                "id": "1",
                "model": "gpt-4.1@tps=0",
                "conversation_id": "trip",
                "system": "You are terse.",
                "content": "Plan a trip",
                "params": {"max_tokens": 8},
            }
        )
        first = await ws.until_end("1")
        # the same system prompt again must not be stored twice
        await ws.send(
            {
                "type": "chat",
                "id": "2",
                "model": "gpt-4.1@tps=0",
                "conversation_id": "trip",
                "system": "You are terse.",
                "content": "Cheaper?",
                "params": {"max_tokens": 8},
            }
        )
        second = await ws.until_end("2")
    gw.stop()
    gw2 = spawn("serve", "--port", "0", env=env)
    async with await WS.connect(gw2.ws) as ws:
        await ws.send(
            {
                "type": "chat",
                "id": "3",
                "model": "gpt-4.1@tps=0",
                "conversation_id": "trip",
                "content": "And in May?",
                "params": {"max_tokens": 8},
            }
        )
        third = await ws.until_end("3")
    assert third[-1]["status"] == "completed"
    async with aiohttp.ClientSession() as s:
        async with s.get(sim.http + "/_sim/requests") as r:
            bodies = await r.json()
        async with s.get(gw2.http + "/v1/conversations/trip") as r:
            stored = (await r.json())["messages"]
    assert bodies[-1]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Plan a trip"},
        {"role": "assistant", "content": text_of(first)},
        {"role": "user", "content": "Cheaper?"},
        {"role": "assistant", "content": text_of(second)},
        {"role": "user", "content": "And in May?"},
    ]
    assert text_of(first) and text_of(second) != text_of(first)
    assert stored == [*bodies[-1]["messages"], {"role": "assistant", "content": text_of(third)}]


async def test_cancelled_reply_keeps_what_was_sent(spawn, sim, tmp_path) -> None:
    env = {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": sim.http + "/v1", "TOKENWIRE_DB": str(tmp_path / "c.db")}
    gw = spawn("serve", "--port", "0", env=env)
    async with await WS.connect(gw.ws) as ws:
        await ws.send(
            {
                "type": "chat",
                "id": "c",
                "model": "gpt-4.1@tps=100@tokens=500",
                "conversation_id": "k",
                "content": "long one",
            }
        )
        events = []
        while len([e for e in events if e["type"] == "token"]) < 10:
            events.append(await ws.recv())
        await ws.send({"type": "cancel", "id": "c"})
        events += await ws.until_end("c")
    assert events[-1]["status"] == "cancelled"
    async with aiohttp.ClientSession() as s, s.get(gw.http + "/v1/conversations/k") as r:
        stored = (await r.json())["messages"]
    assert stored == [{"role": "user", "content": "long one"}, {"role": "assistant", "content": text_of(events)}]
    assert 10 <= len([e for e in events if e["type"] == "token"]) < 500


async def test_unknown_conversation_is_404(gateway) -> None:
    async with aiohttp.ClientSession() as s, s.get(gateway.http + "/v1/conversations/nope") as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_next_turn_right_after_end_is_never_busy(gateway) -> None:
    """``end`` comes only once the reply is stored and the conversation is free."""
    async with await WS.connect(gateway.ws) as ws:
        for turn in range(20):
            await ws.send(
                {
                    "type": "chat",
                    "id": f"t{turn}",
                    "conversation_id": "rapid",
                    "content": f"turn {turn}",
                    "params": {"max_tokens": 2},
                }
            )
            events = await ws.until_end(f"t{turn}")
            assert events[-1]["type"] == "end" and events[-1]["status"] == "completed", events
    async with aiohttp.ClientSession() as s, s.get(gateway.http + "/v1/conversations/rapid") as r:
        stored = (await r.json())["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"] * 20


async def test_a_failed_turn_stores_nothing_so_a_retry_is_not_a_duplicate(spawn, sim, tmp_path) -> None:
    env = {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": sim.http + "/v1", "TOKENWIRE_DB": str(tmp_path / "c.db")}
    gw = spawn("serve", "--port", "0", env=env)
    turn = {"type": "chat", "conversation_id": "retry-me", "params": {"max_tokens": 8}}
    async with await WS.connect(gw.ws) as ws:
        await ws.send({**turn, "id": "1", "model": "gpt-4.1@tps=0", "content": "first question"})
        assert (await ws.until_end("1"))[-1]["status"] == "completed"
        # cut after 3 tokens: the client saw part of a reply and an error
        await ws.send({**turn, "id": "2", "model": "gpt-4.1@tps=0@fault=cut:3", "content": "second question"})
        failed = await ws.until_end("2")
        assert failed[-1]["status"] == "failed" and text_of(failed)
        # refused before any token (HTTP 500 from the provider)
        await ws.send({**turn, "id": "3", "model": "gpt-4.1@tps=0@fault=500", "content": "second question"})
        assert (await ws.until_end("3"))[-1]["status"] == "failed"
        await ws.send({**turn, "id": "4", "model": "gpt-4.1@tps=0", "content": "second question"})
        retried = await ws.until_end("4")
        assert retried[-1]["status"] == "completed"
        # a cancelled reply keeps what was sent
        await ws.send({**turn, "id": "5", "model": "gpt-4.1@tps=20", "content": "third question"})
        cancelled = [await ws.recv()]
        while cancelled[-1]["type"] != "token":
            cancelled.append(await ws.recv())
        await ws.send({"type": "cancel", "id": "5"})
        cancelled += await ws.until_end("5")
        assert cancelled[-1]["status"] == "cancelled"
    async with aiohttp.ClientSession() as s, s.get(gw.http + "/v1/conversations/retry-me") as r:
        messages = (await r.json())["messages"]
    assert [(m["role"], m["content"]) for m in messages if m["role"] == "user"] == [
        ("user", "first question"),
        ("user", "second question"),
        ("user", "third question"),
    ]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert messages[3]["content"] == text_of(retried)
    assert messages[5]["content"] == text_of(cancelled) and 0 < len(text_of(cancelled))
