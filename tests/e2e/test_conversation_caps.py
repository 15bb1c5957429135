"""Stored conversations are bounded (issue 14 item 7): turns and bytes per conversation, conversations
per key, an expiry (conversation_ttl), and the history that is sent is counted at admission.

Driven from outside: a real gateway process over real sockets, on SQLite and on a real Redis, and
the three stores directly (memory, SQLite, Redis) for what only storage shows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from eventually import aeventually, eventually
from redisutil import new_prefix
from secutil import create_key
from wsutil import WS

from tokenwire.store.base import StoreCaps
from tokenwire.store.memory import MemoryConversationStore
from tokenwire.store.redis import RedisConversationStore
from tokenwire.store.sqlite import SQLiteConversationStore

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(90)]


def serve(spawn, db: Path, **env: str):
    return spawn(
        "serve",
        "--port",
        "0",
        env={"TOKENWIRE_DB": str(db), "TOKENWIRE_SIMULATED_SPEED": "100", **env},
    )


async def chat(
    s: aiohttp.ClientSession, gw, cid: str | None, content: str, key: str | None = None, system: str | None = None
):
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    body = {"model": "gpt-4.1", "messages": messages, "max_tokens": 3}
    if cid is not None:
        body["conversation_id"] = cid
    hdr = {"Authorization": f"Bearer {key}"} if key else {}
    async with s.post(gw.http + "/v1/chat/completions", json=body, headers=hdr) as r:
        return r.status, await r.json(content_type=None)


async def stored(s: aiohttp.ClientSession, gw, cid: str, key: str | None = None):
    hdr = {"Authorization": f"Bearer {key}"} if key else {}
    async with s.get(f"{gw.http}/v1/conversations/{cid}", headers=hdr) as r:
        return r.status, await r.json(content_type=None)


# -- per conversation: messages and bytes ---------------------------------------------------------


async def test_a_long_conversation_keeps_its_newest_turns_in_storage(spawn, tmp_path) -> None:
    """1,200 small turns stored 2,400 messages; now the oldest go and the chat goes on."""
    gw = serve(spawn, tmp_path / "gw.db", TOKENWIRE_MAX_CONVERSATION_MESSAGES="10")
    async with aiohttp.ClientSession() as s:
        for i in range(14):
            st, body = await chat(s, gw, "long", f"question {i}", system="be brief" if i == 0 else None)
            assert st == 200, body
        st, conv = await stored(s, gw, "long")
        assert st == 200, conv
    msgs = conv["messages"]
    assert msgs[0] == {"role": "system", "content": "be brief"}, msgs[0]  # the system prompt stays
    turns = msgs[1:]
    assert len(turns) == 10, [m["content"] for m in turns]
    assert [m["role"] for m in turns] == ["user", "assistant"] * 5  # whole turns, from a question
    assert [m["content"] for m in turns[::2]] == [f"question {i}" for i in range(9, 14)]


async def test_stored_bytes_are_capped_and_the_newest_turn_always_kept(spawn, tmp_path) -> None:
    gw = serve(
        spawn, tmp_path / "gw.db", TOKENWIRE_MAX_CONVERSATION_BYTES="100000", TOKENWIRE_MAX_HISTORY_BYTES="90000"
    )
    async with aiohttp.ClientSession() as s:
        for i in range(8):
            st, body = await chat(s, gw, "big", f"turn {i} " + "x" * 30_000)
            assert st == 200, body
        _, conv = await stored(s, gw, "big")
    msgs = conv["messages"]
    size = sum(len(m["content"].encode()) for m in msgs)
    assert size <= 100_000, size
    assert msgs[0]["role"] == "user" and msgs[-1]["role"] == "assistant", [m["role"] for m in msgs]
    assert msgs[-2]["content"].startswith("turn 7 "), msgs[-2]["content"][:10]
    assert len(msgs) == 6, [m["content"][:7] for m in msgs]  # three 30 KB turns fit in 100 KB, not four


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def make_store(request, tmp_path: Path, redis_url: str) -> AsyncIterator[object]:
    made = []

    def make(caps: StoreCaps):
        if request.param == "memory":
            s = MemoryConversationStore(caps)
        elif request.param == "sqlite":
            s = SQLiteConversationStore(str(tmp_path / f"c{len(made)}.db"), caps)
        else:
            s = RedisConversationStore(redis_url, new_prefix(), caps=caps)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.aclose()


async def test_every_store_drops_whole_old_turns_and_truncate_still_counts_from_the_first(make_store) -> None:
    store = make_store(StoreCaps(max_messages=5))
    await store.append("k/a/c", [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}], "sys")
    for i in range(1, 4):
        dropped = await store.append(
            "k/a/c", [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
        )
    # 8 turns-messages over a cap of 5: q0 a0 q1 go, and a1 (an answer without its question)
    assert dropped == 2
    hist = await store.history("k/a/c")
    assert [m["content"] for m in hist] == ["sys", "q2", "a2", "q3", "a3"]
    assert await store.truncate("k/a/c", 2) is True  # keep the first two of what is stored
    assert [m["content"] for m in await store.history("k/a/c")] == ["sys", "q2", "a2"]
    # a turn bigger than the whole cap alone is kept (the newest turn never goes)
    big = [{"role": "user", "content": "u"}] + [{"role": "assistant", "content": str(i)} for i in range(6)]
    await store.append("k/a/c", big)
    assert [m["content"] for m in (await store.history("k/a/c"))[1:]] == ["u", "0", "1", "2", "3", "4", "5"]


async def test_every_store_forgets_a_conversation_after_its_ttl(make_store) -> None:
    store = make_store(StoreCaps(ttl=1.0))
    await store.append("k/a/old", [{"role": "user", "content": "hello"}], "sys")
    await store.set_title("k/a/old", "titled")
    assert len(await store.history("k/a/old")) == 2
    assert await store.count("k/a/") == 1
    assert await store.count("k/a/", besides="k/a/old") == 0
    assert await store.count("k/a/", besides="k/a/other") == 1
    await aeventually(lambda: _gone(store, "k/a/old"), timeout=10, interval=0.1, message="expired")
    assert await store.list("k/a/") == []
    assert await store.count("k/a/") == 0
    assert await store.set_title("k/a/old", "x") is False
    # written again: a conversation of its own, from nothing
    await store.append("k/a/old", [{"role": "user", "content": "again"}])
    assert [m["content"] for m in await store.history("k/a/old")] == ["again"]


async def _gone(store, cid: str) -> bool:
    return await store.history(cid) == []


async def test_redis_keys_carry_the_ttl_refreshed_by_each_write(redis_url: str) -> None:
    import redis.asyncio as aioredis

    prefix = new_prefix()
    store = RedisConversationStore(redis_url, prefix, caps=StoreCaps(ttl=3600))
    r = aioredis.Redis.from_url(redis_url)
    try:
        await store.append("k/a/c", [{"role": "user", "content": "q"}], "sys")
        await store.set_title("k/a/c", "t")
        for key in (f"{prefix}:c:k/a/c", f"{prefix}:c:k/a/c:sys", f"{prefix}:c:k/a/c:t", f"{prefix}:cl:k/a/"):
            ttl = await r.pttl(key)
            assert 3_500_000 < ttl <= 3_600_000, (key, ttl)
        await r.pexpire(f"{prefix}:c:k/a/c", 10_000)
        await store.append("k/a/c", [{"role": "assistant", "content": "a"}])
        assert await r.pttl(f"{prefix}:c:k/a/c") > 3_500_000  # refreshed on write
    finally:
        await r.aclose()
        await store.aclose()


async def test_sqlite_expired_conversations_are_swept_without_any_request(spawn, tmp_path) -> None:
    db = tmp_path / "gw.db"
    gw = serve(spawn, db, TOKENWIRE_CONVERSATION_TTL="1")
    async with aiohttp.ClientSession() as s:
        st, body = await chat(s, gw, "brief", "hello")
        assert st == 200, body
        assert (await stored(s, gw, "brief"))[0] == 200

        def rows() -> tuple[int, int]:
            with sqlite3.connect(db) as c:
                return (
                    c.execute("SELECT COUNT(*) FROM conversations").fetchone()[0],
                    c.execute("SELECT COUNT(*) FROM messages").fetchone()[0],
                )

        assert rows() == (1, 2)
        eventually(lambda: rows() == (0, 0), timeout=15, interval=0.1, message="the sweep deleted it")
        st, body = await stored(s, gw, "brief")
        assert st == 404, body


async def test_redis_conversations_expire_through_the_gateway(spawn, tmp_path, redis_url) -> None:
    gw = serve(
        spawn, tmp_path / "gw.db", TOKENWIRE_REDIS_URL=redis_url, TOKENWIRE_REDIS_PREFIX=new_prefix(),
        TOKENWIRE_CONVERSATION_TTL="1",
    )  # fmt: skip
    async with aiohttp.ClientSession() as s:
        st, body = await chat(s, gw, "brief", "hello")
        assert st == 200, body
        async with s.get(gw.http + "/v1/conversations") as r:
            assert [c["id"] for c in (await r.json())["data"]] == ["brief"]

        async def gone() -> bool:
            async with s.get(gw.http + "/v1/conversations") as r:
                listed = (await r.json())["data"]
            return not listed and (await stored(s, gw, "brief"))[0] == 404

        await aeventually(gone, timeout=15, interval=0.2, message="expired in Redis")


# -- conversations per key --------------------------------------------------------------------------


async def test_conversations_per_key_are_capped_in_each_dialect(spawn, tmp_path) -> None:
    db = tmp_path / "gw.db"
    a = create_key(db, "a")
    b = create_key(db, "b")
    gw = serve(spawn, db, TOKENWIRE_MAX_CONVERSATIONS_PER_KEY="3")
    async with aiohttp.ClientSession() as s:
        for i in range(3):
            st, body = await chat(s, gw, f"c{i}", "hi", key=a)
            assert st == 200, body
        st, body = await chat(s, gw, "c0", "an existing one goes on", key=a)
        assert st == 200, body
        st, body = await chat(s, gw, "c3", "one too many", key=a)
        assert st == 403, body
        err = body["error"]
        assert err["code"] == "too_many_conversations" and "max_conversations_per_key allows (3)" in err["message"], err
        assert (await stored(s, gw, "c3", key=a))[0] == 404  # nothing was stored
        # at the cap, an existing conversation emptied (the page's edit of its first question) goes on
        patch = {"truncate": 0}
        async with s.patch(f"{gw.http}/v1/conversations/c2", json=patch, headers={"Authorization": f"Bearer {a}"}) as r:
            assert r.status == 200, await r.text()
        st, body = await chat(s, gw, "c2", "asked again", key=a)
        assert st == 200, body
        st, body = await chat(s, gw, None, "without a conversation", key=a)
        assert st == 200, body
        st, body = await chat(s, gw, "c3", "another key has room", key=b)
        assert st == 200, body

        ws = await WS.connect(gw.ws, headers={"Authorization": f"Bearer {a}"})
        try:
            await ws.send({"type": "chat", "id": "x", "model": "gpt-4.1", "content": "hi", "conversation_id": "c9"})
            ev = await ws.recv()
            assert ev["type"] == "error" and ev["id"] == "x" and ev["code"] == "too_many_conversations", ev
        finally:
            await ws.close()

        async with s.delete(f"{gw.http}/v1/conversations/c1", headers={"Authorization": f"Bearer {a}"}) as r:
            assert r.status in (200, 204), await r.text()
        st, body = await chat(s, gw, "c3", "room again", key=a)
        assert st == 200, body


# -- admission counts the history that is sent -----------------------------------------------------


async def test_tpm_counts_the_stored_history_that_is_sent(spawn, tmp_path) -> None:
    """A short question on a long stored conversation sends the whole history: TPM must see it."""
    db = tmp_path / "gw.db"
    key = create_key(db, "k", "--tpm", "4000")
    gw = serve(spawn, db)
    async with aiohttp.ClientSession() as s:
        st, body = await chat(s, gw, "long", "x " * 5_000, key=key)  # ~2,500 tokens stored
        assert st == 200, body
        first = body["usage"]["prompt_tokens"]
        assert first > 2_000, body["usage"]
        # ~1,500 tokens left of the minute: "hi" alone fits, "hi" with its history does not
        st, body = await chat(s, gw, "long", "hi", key=key)
        assert st == 429, (st, body)
        err = body["error"]
        assert err["code"] == "rate_limited" and "tokens per minute" in err["message"], err
        st, body = await chat(s, gw, None, "hi", key=key)  # the same question alone is admitted
        assert st == 200, body


async def test_budget_counts_the_stored_history_that_is_sent(spawn, tmp_path) -> None:
    """gpt-4.1 at $2 per million input tokens: a $0.006 budget buys ~2,900 tokens of prompt."""
    db = tmp_path / "gw.db"
    key = create_key(db, "k", "--budget-usd", "0.009")
    gw = serve(spawn, db)
    async with aiohttp.ClientSession() as s:
        st, body = await chat(s, gw, "long", "x " * 6_000, key=key)  # ~3,000 tokens: ~$0.006
        assert st == 200, body
        # $0.003 left: the question alone costs nothing much, with its history ~$0.006
        st, body = await chat(s, gw, "long", "hi", key=key)
        assert st == 402, (st, body)
        assert body["error"]["code"] == "budget_exceeded", body


async def test_a_sqlite_database_from_before_caps_is_migrated_and_capped(tmp_path) -> None:
    """Rows written by the previous schema (no size column) get their size once, at open."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.executescript(
            "CREATE TABLE conversations (id TEXT PRIMARY KEY, system TEXT, created REAL NOT NULL, "
            "updated REAL NOT NULL, title TEXT);"
            "CREATE TABLE messages (conversation_id TEXT NOT NULL, idx INTEGER NOT NULL, role TEXT NOT NULL, "
            "content TEXT, extra TEXT, created REAL NOT NULL, PRIMARY KEY (conversation_id, idx));"
        )
        c.execute("INSERT INTO conversations VALUES ('c', NULL, 1, strftime('%s','now'), NULL)")
        for i in range(6):
            c.execute(
                "INSERT INTO messages VALUES ('c', ?, ?, ?, NULL, 1)",
                (i, "user" if i % 2 == 0 else "assistant", "é" * 50),
            )
    store = SQLiteConversationStore(str(db), StoreCaps(max_bytes=350))
    try:
        # 6 × 100 bytes stored + 2 × 100 new: 800 > 350, so the oldest 5 go, then a leading answer
        dropped = await store.append(
            "c", [{"role": "user", "content": "é" * 50}, {"role": "assistant", "content": "é" * 50}]
        )
        assert dropped == 6
        assert [m["role"] for m in await store.history("c")] == ["user", "assistant"]
    finally:
        await store.aclose()
