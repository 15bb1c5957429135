"""Keys against a real gateway: every way in without a valid key is refused before the upgrade."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from rawws import Raw
from secutil import cli, create_key, usage
from wsutil import WS, text_of

from tokenwire.auth.keys import hash_key, new_record

CHAT = {"type": "chat", "id": "c1", "model": "gpt-4.1", "content": "hello", "params": {"max_tokens": 5}}


@pytest.fixture
def keyed(spawn, tmp_path):
    """A gateway with keys: alice (any model), bob (gpt-* only), and a fast key cache."""
    db = tmp_path / "gw.db"
    keys = {"alice": create_key(db, "alice"), "bob": create_key(db, "bob", "--models", "gpt-*")}
    gw = spawn(
        "serve",
        "--port",
        "0",
        env={
            "TOKENWIRE_DB": str(db),
            "TOKENWIRE_SIMULATED_SPEED": "50",
            "TOKENWIRE_KEY_CACHE_TTL": "0.2",
            "TOKENWIRE_ALLOWED_ORIGINS": "https://app.example.com",
        },
    )
    gw.db = db  # type: ignore[attr-defined]
    gw.keys = keys  # type: ignore[attr-defined]
    return gw


async def refused(url: str, status: int, **kwargs) -> dict:
    """The handshake is answered with ``status`` and an OpenAI-style error body (no upgrade)."""
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(url, **kwargs)
        assert info.value.status == status
    # the same handshake, read raw: the reason is in the body
    headers = dict(kwargs.get("headers") or {})
    if kwargs.get("protocols"):
        headers["Sec-WebSocket-Protocol"] = ", ".join(kwargs["protocols"])
    host, _, rest = url.removeprefix("ws://").partition("/")
    h, port = host.split(":")
    raw = await Raw.connect(h, int(port), "/" + rest, headers=headers)
    assert raw.status == status
    assert b"upgrade: websocket" not in raw.head.lower()
    length = int(
        next(
            v
            for k, v in (ln.split(b":", 1) for ln in raw.head.split(b"\r\n")[1:] if b":" in ln)
            if k.strip().lower() == b"content-length"
        )
    )
    body = orjson.loads(await raw.reader.readexactly(length))
    raw.close()
    return body["error"]


async def test_every_way_in_without_a_valid_key_is_refused(keyed) -> None:
    err = await refused(keyed.ws, 401)
    assert err["code"] == "unauthorized" and "Authorization: Bearer" in err["message"]
    bad = "tw_" + "x" * 43
    assert (await refused(keyed.ws, 401, headers={"Authorization": f"Bearer {bad}"}))["message"] == (
        "the API key is not valid"
    )
    await refused(keyed.ws, 401, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    await refused(keyed.ws, 401, protocols=("tokenwire.v1", f"bearer.{bad}"))
    await refused(keyed.ws + f"?key={bad}", 401)
    await refused(keyed.ws + "?key=", 401)
    # a key that is valid for another gateway (right shape, wrong hash) and a truncated real key
    await refused(keyed.ws, 401, headers={"Authorization": "Bearer " + keyed.keys["alice"][:-1]})
    # HTTP too
    async with aiohttp.ClientSession() as s:
        body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
        async with s.post(keyed.http + "/v1/chat/completions", json=body) as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"
        async with s.get(keyed.http + "/v1/models", headers={"Authorization": f"Bearer {bad}"}) as r:
            assert r.status == 401
        async with s.get(keyed.http + "/healthz") as r:
            assert r.status == 200  # health stays open for load balancers


async def test_each_way_in_with_a_valid_key_works(keyed) -> None:
    key = keyed.keys["alice"]
    for kwargs, url in (
        ({"headers": {"Authorization": f"Bearer {key}"}}, keyed.ws),
        ({"protocols": ("tokenwire.v1", f"bearer.{key}")}, keyed.ws),
        ({}, keyed.ws + f"?key={key}"),
    ):
        async with await WS.connect(url, **kwargs) as ws:
            if "protocols" in kwargs:
                assert ws.ws.protocol == "tokenwire.v1"  # never echoes the bearer.<key> protocol
            await ws.send(CHAT)
            events = await ws.until_end("c1")
            assert events[-1]["status"] == "completed" and text_of(events)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        async with s.post(keyed.http + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
    assert key not in keyed.text()  # ?key= never reaches a log line
    assert usage(keyed.db)["alice"]["requests"] == 4


async def test_revoked_key_is_refused_and_live_socket_stops(keyed) -> None:
    key = keyed.keys["alice"]
    async with await WS.connect(keyed.ws, headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(CHAT)
        assert (await ws.until_end("c1"))[-1]["status"] == "completed"
        out = cli(keyed.db, "keys", "revoke", "alice")
        assert out.returncode == 0 and "revoked" in out.stdout
        # Stays a sleep: the key cache's expiry is the behaviour under test: 0.4 s is 2x key_cache_ttl = 0.2 s.
        await asyncio.sleep(0.4)
        await ws.send({**CHAT, "id": "c2"})
        err = await ws.recv()
        assert err["type"] == "error" and err["id"] == "c2" and err["code"] == "unauthorized"
        assert "revoked" in err["message"]
    err = await refused(keyed.ws, 401, headers={"Authorization": f"Bearer {key}"})
    assert "revoked" in err["message"]
    # bob still works
    async with await WS.connect(keyed.ws, protocols=("tokenwire.v1", "bearer." + keyed.keys["bob"])) as ws:
        await ws.send(CHAT)
        assert (await ws.until_end("c1"))[-1]["status"] == "completed"


async def test_origin_allowlist(keyed) -> None:
    auth = {"Authorization": "Bearer " + keyed.keys["alice"]}
    err = await refused(keyed.ws, 403, headers={**auth, "Origin": "https://evil.example.net"})
    assert err["code"] == "forbidden" and "evil.example.net" in err["message"]
    await refused(keyed.ws, 403, headers={**auth, "Origin": "null"})
    for origin in ("https://app.example.com", "https://APP.example.com/"):
        async with await WS.connect(keyed.ws, headers={**auth, "Origin": origin}) as ws:
            await ws.send({"type": "ping"})
            assert (await ws.recv())["type"] == "pong"


async def test_open_mode_takes_any_loopback_origin_and_nothing_else(spawn, tmp_path) -> None:
    """Without keys (so bound to loopback) a page from any loopback port may connect, as to Ollama:
    e.g. seed 002's page served by ``python3 -m http.server``. Every other origin is refused."""
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": ":memory:"})
    for origin in (f"http://127.0.0.1:{gw.port}", "http://127.0.0.1:1", "http://localhost:8080", "http://[::1]:3000"):
        async with await WS.connect(gw.ws, headers={"Origin": origin}) as ws:
            await ws.send({"type": "ping"})
            assert (await ws.recv())["type"] == "pong", origin
    await refused(gw.ws, 403, headers={"Origin": "https://evil.example.net"})
    await refused(gw.ws, 403, headers={"Origin": "http://127.0.0.1.evil.example:80"})
    await refused(gw.ws, 403, headers={"Origin": "null"})


async def test_with_keys_the_same_host_origin_is_the_default(spawn, tmp_path) -> None:
    from secutil import create_key

    db = tmp_path / "keys.db"
    key = create_key(db, "alice")
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": str(db)})
    auth = {"Authorization": f"Bearer {key}"}
    async with await WS.connect(gw.ws, headers={**auth, "Origin": f"http://127.0.0.1:{gw.port}"}) as ws:
        await ws.send({"type": "ping"})
        assert (await ws.recv())["type"] == "pong"
    await refused(gw.ws, 403, headers={**auth, "Origin": "http://127.0.0.1:1"})
    await refused(gw.ws, 403, headers={**auth, "Origin": "https://evil.example.net"})


async def test_model_allowlist_per_key(keyed) -> None:
    async with await WS.connect(keyed.ws, headers={"Authorization": "Bearer " + keyed.keys["bob"]}) as ws:
        await ws.send({**CHAT, "model": "claude-sonnet-4.5"})
        err = await ws.recv()
        assert err["code"] == "forbidden" and err["id"] == "c1" and "gpt-*" in err["message"]
        await ws.send({**CHAT, "id": "c2"})
        assert (await ws.until_end("c2"))[-1]["status"] == "completed"


def test_non_loopback_bind_needs_keys_or_an_explicit_flag(spawn, tmp_path) -> None:
    db = tmp_path / "open.db"
    out = cli(db, "serve", "--host", "0.0.0.0", "--port", "0")
    assert out.returncode == 2 and "refusing to serve on 0.0.0.0 with no API keys" in out.stderr
    assert "Traceback" not in out.stderr
    gw = spawn("serve", "--host", "0.0.0.0", "--port", "0", "--insecure-open", env={"TOKENWIRE_DB": str(db)})
    gw.stop()
    create_key(db, "k")
    spawn("serve", "--host", "0.0.0.0", "--port", "0", env={"TOKENWIRE_DB": str(db)})


def test_keys_are_stored_hashed_and_listed_without_the_key(tmp_path) -> None:
    db = tmp_path / "k.db"
    key = create_key(db, "carol", "--rpm", "7", "--budget-usd", "1.5")
    raw = db.read_bytes() + (
        db.with_name(db.name + "-wal").read_bytes() if db.with_name(db.name + "-wal").exists() else b""
    )
    assert key.encode() not in raw and hash_key(key).encode() in raw
    listing = cli(db, "keys", "list").stdout
    assert "carol" in listing and key not in listing and key[:10] + "…" in listing and "$1.5" in listing
    assert cli(db, "keys", "create", "--name", "carol").returncode == 1  # duplicate active name
    record, k2 = new_record("x")
    assert record.matches(k2) and not record.matches(k2[:-1] + ("A" if k2[-1] != "A" else "B"))


async def test_only_the_key_that_started_a_stream_may_resume_it(keyed) -> None:
    alice = {"Authorization": "Bearer " + keyed.keys["alice"]}
    bob = {"Authorization": "Bearer " + keyed.keys["bob"]}
    msgs = [{"role": "user", "content": "resume me"}]
    ws = await WS.connect(keyed.ws, headers=alice)
    await ws.send(
        {
            "type": "chat",
            "id": "r",
            "model": "gpt-4.1",
            "messages": msgs,
            "stream_id": "s_resume_me_1",
            "params": {"max_tokens": 400},
        }
    )
    assert (await ws.recv())["type"] == "start"
    await ws.close()
    async with await WS.connect(keyed.ws, headers=bob) as other:
        await other.send({"type": "attach", "id": "x", "stream_id": "s_resume_me_1", "last_seq": 0})
        err = await other.recv()
        # exactly the answer for an id that does not exist: nothing tells bob the id is taken
        assert err["type"] == "error" and err["code"] == "stream_expired" and err["id"] == "x"
        await other.send({"type": "attach", "id": "y", "stream_id": "s_never_started", "last_seq": 0})
        unknown = await other.recv()
        assert err["message"] == unknown["message"].replace("s_never_started", "s_resume_me_1"), (err, unknown)
    async with await WS.connect(keyed.ws, headers=alice) as same:
        await same.send({"type": "attach", "id": "x", "stream_id": "s_resume_me_1", "last_seq": 0})
        events = await same.until_end("x")
        assert events[-1]["type"] == "end" and events[0]["seq"] == 1


async def test_conversations_belong_to_the_key_that_made_them(keyed) -> None:
    """Knowing another key's conversation id reads nothing of it and continues nothing of it."""
    alice = {"Authorization": "Bearer " + keyed.keys["alice"]}
    bob = {"Authorization": "Bearer " + keyed.keys["bob"]}
    turn = {"type": "chat", "model": "gpt-4.1", "conversation_id": "team-notes", "params": {"max_tokens": 3}}
    async with await WS.connect(keyed.ws, headers=alice) as ws:
        await ws.send({**turn, "id": "a1", "content": "alice's secret plan"})
        events = await ws.until_end("a1")
        assert events[0]["conversation_id"] == "team-notes" and events[-1]["status"] == "completed"
    async with aiohttp.ClientSession() as s:
        async with s.get(keyed.http + "/v1/conversations/team-notes", headers=bob) as r:
            assert r.status == 404
        async with s.delete(keyed.http + "/v1/conversations/team-notes", headers=bob) as r:
            assert r.status == 404
    async with await WS.connect(keyed.ws, headers=bob) as ws:  # the same id: bob's own conversation
        await ws.send({**turn, "id": "b1", "content": "bob's turn"})
        events = await ws.until_end("b1")
        assert events[0]["conversation_id"] == "team-notes" and events[-1]["status"] == "completed"
    async with aiohttp.ClientSession() as s:
        async with s.get(keyed.http + "/v1/conversations/team-notes", headers=alice) as r:
            mine = (await r.json())["messages"]
        async with s.get(keyed.http + "/v1/conversations/team-notes", headers=bob) as r:
            theirs = (await r.json())["messages"]
    assert [m["content"] for m in mine if m["role"] == "user"] == ["alice's secret plan"]
    assert [m["content"] for m in theirs if m["role"] == "user"] == ["bob's turn"]
    assert len(mine) == len(theirs) == 2  # each: its user turn and the reply


async def test_a_polled_generation_is_read_only_by_its_key(keyed) -> None:
    alice = {"Authorization": "Bearer " + keyed.keys["alice"]}
    bob = {"Authorization": "Bearer " + keyed.keys["bob"]}
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "poll me"}], "max_tokens": 3}
    async with aiohttp.ClientSession() as s:
        async with s.post(keyed.http + "/v1/poll/start", json=body, headers=alice) as r:
            sid = (await r.json())["id"]
        async with s.get(keyed.http + f"/v1/poll/{sid}?wait=2", headers=bob) as r:
            assert r.status == 404
        async with s.get(keyed.http + f"/v1/poll/{sid}?wait=2", headers=alice) as r:
            assert r.status == 200 and (await r.json())["events"][0]["type"] == "start"


async def test_metrics_need_a_key_once_keys_exist(keyed) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(keyed.http + "/metrics") as r:
            assert r.status == 401
        headers = {"Authorization": "Bearer " + keyed.keys["alice"]}
        async with s.get(keyed.http + "/metrics", headers=headers) as r:
            assert r.status == 200 and "tokenwire_open_sockets" in await r.text()
