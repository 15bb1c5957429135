"""Stream ids are scoped per API key: another key's id neither blocks yours nor is revealed.

Two keys may choose the same ``stream_id`` (each gets its own generation), and an attach to
another key's id is answered exactly like one to an id that never existed.
"""

from __future__ import annotations

import uuid

import pytest
from redisutil import new_prefix
from secutil import create_key
from wsutil import WS, text_of

pytestmark = pytest.mark.hostile


def chat(gid: str, sid: str, prompt: str, n: int = 30) -> dict:
    return {
        "type": "chat",
        "id": gid,
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": prompt}],
        "stream_id": sid,
        "params": {"max_tokens": n},
    }


def gateways(spawn, tmp_path, n: int, **env: str):
    db = tmp_path / "keys.db"
    keys = {name: {"Authorization": "Bearer " + create_key(db, name)} for name in ("alice", "bob")}
    procs = [
        spawn("serve", "--port", "0", env={"TOKENWIRE_DB": str(db), "TOKENWIRE_SIMULATED_SPEED": "5", **env})
        for _ in range(n)
    ]
    return procs, keys


async def same_id_two_keys(alice_ws: str, bob_ws: str, keys: dict) -> None:
    sid = "s_" + uuid.uuid4().hex
    async with await WS.connect(alice_ws, headers=keys["alice"]) as a:
        await a.send(chat("a", sid, "alice's question"))
        assert (await a.recv())["type"] == "start"
        async with await WS.connect(bob_ws, headers=keys["bob"]) as b:
            # bob picks the same id while alice's generation runs: his own, not a duplicate_id
            await b.send(chat("b", sid, "bob's question"))
            bob_events = await b.until_end("b")
            assert bob_events[0]["type"] == "start", bob_events[0]
            assert bob_events[-1]["type"] == "end" and bob_events[-1]["status"] == "completed"
        async with await WS.connect(bob_ws, headers=keys["bob"]) as b:
            # bob attaching to the id now reaches his own (ended, retained) generation, never alice's
            await b.send({"type": "attach", "id": "mine", "stream_id": sid, "last_seq": -1})
            again = await b.until_end("mine")
            assert text_of(again) == text_of(bob_events) != ""
        alice_events = await a.until_end("a")
        assert alice_events[-1]["status"] == "completed"
        assert text_of(alice_events) != text_of(bob_events)


async def foreign_is_unknown(alice_ws: str, bob_ws: str, keys: dict) -> None:
    sid = "s_" + uuid.uuid4().hex
    unknown_sid = "s_" + uuid.uuid4().hex
    async with await WS.connect(alice_ws, headers=keys["alice"]) as a:
        await a.send(chat("a", sid, "a long one", 400))
        assert (await a.recv())["type"] == "start"
        async with await WS.connect(bob_ws, headers=keys["bob"]) as b:
            await b.send({"type": "attach", "id": "x", "stream_id": sid, "last_seq": -1})
            foreign = await b.recv()
            await b.send({"type": "attach", "id": "x", "stream_id": unknown_sid, "last_seq": -1})
            unknown = await b.recv()
        await a.send({"type": "cancel", "id": "a"})
    assert foreign["type"] == unknown["type"] == "error", (foreign, unknown)
    assert foreign["code"] == unknown["code"] == "stream_expired", (foreign, unknown)
    # the same answer, word for word, but for the id itself
    assert {**foreign, "message": foreign["message"].replace(sid, "ID"), "stream_id": "ID"} == {
        **unknown,
        "message": unknown["message"].replace(unknown_sid, "ID"),
        "stream_id": "ID",
    }


async def test_two_keys_may_use_the_same_stream_id(spawn, tmp_path) -> None:
    (gw,), keys = gateways(spawn, tmp_path, 1)
    await same_id_two_keys(gw.ws, gw.ws, keys)


async def test_another_keys_stream_is_answered_like_an_unknown_one(spawn, tmp_path) -> None:
    (gw,), keys = gateways(spawn, tmp_path, 1)
    await foreign_is_unknown(gw.ws, gw.ws, keys)


async def test_stream_ids_are_per_key_across_instances(spawn, tmp_path, redis_url) -> None:
    (a, b), keys = gateways(spawn, tmp_path, 2, TOKENWIRE_REDIS_URL=redis_url, TOKENWIRE_REDIS_PREFIX=new_prefix())
    await same_id_two_keys(a.ws, b.ws, keys)
    await foreign_is_unknown(a.ws, b.ws, keys)
