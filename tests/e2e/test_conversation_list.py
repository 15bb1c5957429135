"""The conversation list and rename API (GET /v1/conversations, PATCH /v1/conversations/{cid}), per API key,
on every store (memory, SQLite, Redis) and through a real keyed gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from procs import Proc
from redisutil import new_prefix, shared_or_private
from secutil import create_key

from tokenwire.store.memory import MemoryConversationStore
from tokenwire.store.redis import RedisConversationStore
from tokenwire.store.sqlite import SQLiteConversationStore

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request, tmp_path: Path) -> AsyncIterator[object]:
    server = None
    if request.param == "memory":
        s = MemoryConversationStore()
    elif request.param == "sqlite":
        s = SQLiteConversationStore(str(tmp_path / "c.db"))
    else:
        url, server = shared_or_private()
        s = RedisConversationStore(url, new_prefix())
    yield s
    await s.aclose()
    if server is not None:
        server.stop()


async def test_store_lists_one_owners_conversations_newest_first(store) -> None:
    await store.append(
        "k/a/one", [{"role": "user", "content": "first   question\nof a"}, {"role": "assistant", "content": "x"}]
    )
    await store.append("k/b/two", [{"role": "user", "content": "b's"}], system="sys")
    await store.append("k/a/three", [{"role": "user", "content": [{"type": "text", "text": "parts"}]}])
    await store.append("open", [{"role": "user", "content": "no key"}])
    rows = await store.list("k/a/")
    assert [r["id"] for r in rows] == ["k/a/three", "k/a/one"]
    assert [r["title"] for r in rows] == ["parts", "first question of a"]
    assert rows[0]["updated"] >= rows[1]["updated"] > 0
    assert [r["id"] for r in await store.list("k/b/")] == ["k/b/two"]
    assert [r["id"] for r in await store.list("")] == ["open"]  # open mode never sees a key's conversations
    assert await store.list("k/c/") == []
    assert len(await store.list("k/a/", limit=1)) == 1

    assert await store.set_title("k/a/one", "Trip to Chiang Mai") is True
    assert await store.set_title("k/a/nope", "x") is False
    assert [r["title"] for r in await store.list("k/a/")] == ["parts", "Trip to Chiang Mai"]
    await store.append("k/a/one", [{"role": "user", "content": "more"}])  # an update moves it to the top
    assert [r["id"] for r in await store.list("k/a/")] == ["k/a/one", "k/a/three"]
    assert await store.delete("k/a/one") is True
    assert [r["id"] for r in await store.list("k/a/")] == ["k/a/three"]
    await store.append("k/a/one", [{"role": "user", "content": "again"}])  # a new one under the old id: no old title
    assert {r["id"]: r["title"] for r in await store.list("k/a/")}["k/a/one"] == "again"


async def test_store_truncates_to_the_first_turns(store) -> None:
    turns = [{"role": r, "content": f"{r} {i}"} for i in range(3) for r in ("user", "assistant")]
    await store.append("k/a/t", turns, system="be brief")
    assert await store.truncate("k/a/t", 3) is True
    assert await store.history("k/a/t") == [{"role": "system", "content": "be brief"}, *turns[:3]]
    await store.append("k/a/t", [{"role": "assistant", "content": "new"}])  # goes on after the cut
    assert [m["content"] for m in await store.history("k/a/t")][-2:] == ["user 1", "new"]
    assert await store.truncate("k/a/t", 0) is True
    assert await store.history("k/a/t") == [{"role": "system", "content": "be brief"}]
    assert await store.truncate("k/a/none", 1) is False


async def test_the_api_is_per_key(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    ann, bob = create_key(db, "ann"), create_key(db, "bob")
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": str(db), "TOKENWIRE_SIMULATED_SPEED": "50"})

    async with aiohttp.ClientSession() as s:

        def h(key: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {key}"}

        async def chat(key: str, cid: str, text: str) -> None:
            body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": text}], "conversation_id": cid}
            async with s.post(gw.http + "/v1/chat/completions", json=body, headers=h(key)) as r:
                assert r.status == 200, await r.text()

        await chat(ann, "c1", "Ann's first")
        await chat(ann, "c2", "Ann's second")
        await chat(bob, "c1", "Bob's own c1")
        async with s.get(gw.http + "/v1/conversations", headers=h(ann)) as r:
            assert r.status == 200
            assert [(c["id"], c["title"]) for c in (await r.json())["data"]] == [
                ("c2", "Ann's second"),
                ("c1", "Ann's first"),
            ]
        async with s.get(gw.http + "/v1/conversations", headers=h(bob)) as r:
            assert [(c["id"], c["title"]) for c in (await r.json())["data"]] == [("c1", "Bob's own c1")]
        async with s.get(gw.http + "/v1/conversations") as r:
            assert r.status == 401

        async with s.patch(
            gw.http + "/v1/conversations/c1", json={"title": "  Renamed\n by Ann "}, headers=h(ann)
        ) as r:
            assert r.status == 200 and await r.json() == {"id": "c1", "title": "Renamed by Ann"}
        async with s.get(gw.http + "/v1/conversations", headers=h(bob)) as r:
            assert (await r.json())["data"][0]["title"] == "Bob's own c1"  # Bob's c1 is another conversation
        async with s.patch(gw.http + "/v1/conversations/c2", json={"title": "x"}, headers=h(bob)) as r:
            assert r.status == 404  # Ann's c2 does not exist for Bob
        for bad in ({"title": ""}, {"title": 5}, [1]):
            async with s.patch(gw.http + "/v1/conversations/c1", json=bad, headers=h(ann)) as r:
                assert r.status == 400, bad
        async with s.patch(gw.http + "/v1/conversations/c1", data=b"{", headers=h(ann)) as r:
            assert r.status == 400
        for bad in ({"truncate": -1}, {"truncate": "1"}, {"truncate": True}, {}):
            async with s.patch(gw.http + "/v1/conversations/c1", json=bad, headers=h(ann)) as r:
                assert r.status == 400, bad

        await chat(ann, "c1", "Ann's next")
        async with s.patch(gw.http + "/v1/conversations/c1", json={"truncate": 2}, headers=h(ann)) as r:
            assert r.status == 200 and await r.json() == {"id": "c1", "truncate": 2}
        async with s.get(gw.http + "/v1/conversations/c1", headers=h(ann)) as r:
            assert [m["role"] for m in (await r.json())["messages"]] == ["user", "assistant"]
        async with s.get(gw.http + "/v1/conversations/c1", headers=h(bob)) as r:
            assert len((await r.json())["messages"]) == 2  # Bob's c1 untouched

        async with s.delete(gw.http + "/v1/conversations/c2", headers=h(ann)) as r:
            assert r.status == 200
        async with s.get(gw.http + "/v1/conversations", headers=h(ann)) as r:
            assert [(c["id"], c["title"]) for c in (await r.json())["data"]] == [("c1", "Renamed by Ann")]
