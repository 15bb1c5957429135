"""The real Vercel AI SDK (npm ``ai``, pinned in tests/js/package-lock.json) against real gateways.

A Node script (tests/js/aisdk_client.mjs) drives ``DefaultChatTransport`` and
``WebSocketChatTransport`` (sendMessages / reconnectToStream) and prints what it got: the
chunks and the UIMessage the SDK accumulated. Replies come from the fake upstream
(``tokenwire simulate``), replaying the recorded streams in ../shared/fixtures/sse.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from procs import Proc
from redisutil import new_prefix
from secutil import create_key

from tokenwire.simulate.reply import reply_tokens

JS = Path(__file__).resolve().parents[1] / "js"
SCRIPT = JS / "aisdk_client.mjs"
TRANSPORTS = ["http", "ws"]


# -- Node and the SDK -------------------------------------------------------------------
@pytest.fixture(scope="module")
def node() -> list[str]:
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("node is not installed (the AI SDK tests need Node 20+)")
    if not (JS / "node_modules" / "ai" / "package.json").is_file():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed to install tests/js (npm ci)"
        out = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
    major = int(
        subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip().lstrip("v").split(".")[0]
    )
    # Node 20 has WebSocket behind a flag (22 has it on by default)
    return [exe, "--experimental-websocket"] if major < 22 else [exe]


def installed_ai_version() -> str:
    return json.loads((JS / "node_modules" / "ai" / "package.json").read_text())["version"]


async def run_node(node: list[str], steps: list[dict[str, Any]], timeout: float = 60) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        *node,
        str(SCRIPT),
        json.dumps(steps),
        cwd=JS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def url(gw: Proc, transport: str) -> str:
    return gw.ws if transport == "ws" else gw.http + "/api/chat"


def user(text: str) -> list[dict[str, Any]]:
    return [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}]


def send(gw: Proc, transport: str, chat_id: str, text: str, **more: Any) -> dict[str, Any]:
    return {
        "op": "send",
        "transport": transport,
        "url": url(gw, transport),
        "chatId": chat_id,
        "messages": user(text),
    } | more


def reconnect(gw: Proc, transport: str, chat_id: str, **more: Any) -> dict[str, Any]:
    return {"op": "reconnect", "transport": transport, "url": url(gw, transport), "chatId": chat_id} | more


def parts(result: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [p for p in result["message"]["parts"] if p["type"] == kind or p["type"].startswith(kind)]


def text_of(result: dict[str, Any], kind: str = "text") -> str:
    return "".join(p["text"] for p in result["message"]["parts"] if p["type"] == kind)


def expected(prompt: str, n: int) -> str:
    return "".join(reply_tokens([{"role": "user", "content": prompt}], n))


def deltas(result: dict[str, Any]) -> str:
    return "".join(c["delta"] for c in result["chunks"] if c["type"] == "text-delta")


# -- the fake upstream and gateways ----------------------------------------------------------
def recorded(fixtures_dir: Path, name: str) -> dict[str, Any]:
    """What a recorded OpenAI-format stream says: its text, reasoning and tool calls."""
    text, reasoning, calls = [], [], {}
    for line in (fixtures_dir / name).read_text().split("\n"):
        if not line.startswith("data:") or "[DONE]" in line:
            continue
        for choice in json.loads(line[5:]).get("choices") or []:
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            for tc in delta.get("tool_calls") or []:
                call = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                call["id"] = tc.get("id") or call["id"]
                call["name"] += (tc.get("function") or {}).get("name") or ""
                call["arguments"] += (tc.get("function") or {}).get("arguments") or ""
    tools = [{"toolCallId": c["id"], "name": c["name"], "input": json.loads(c["arguments"])} for c in calls.values()]
    return {"text": "".join(text), "reasoning": "".join(reasoning), "tools": tools}


@pytest.fixture
def replay_gw(spawn: Callable[..., Proc], fixtures_dir: Path) -> Proc:
    sim = spawn("simulate", "--port", "0", "--fixtures", str(fixtures_dir))
    return spawn(
        "serve",
        "--port",
        "0",
        env={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": sim.http + "/v1", "TOKENWIRE_DB": ":memory:"},
    )


@pytest.fixture
def cluster(spawn: Callable[..., Proc], sim: Proc, redis_url: str) -> Callable[..., list[Proc]]:
    """N gateways on one Redis (a key prefix of their own), relaying to ``sim`` (as tests/test_cluster.py)."""

    def start(n: int = 2) -> list[Proc]:
        env = {
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": sim.http + "/v1",
            "TOKENWIRE_REDIS_URL": redis_url,
            "TOKENWIRE_REDIS_PREFIX": new_prefix(),
            "TOKENWIRE_DB": ":memory:",
        }
        return [spawn("serve", "--port", "0", env=env) for _ in range(n)]

    return start


async def sim_stats(sim: Proc) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(sim.http + "/_sim/stats") as r:
        return await r.json()


async def until_active(sim: Proc, n: int = 1, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = await sim_stats(sim)
        if stats["active"] >= n:
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError("the upstream never got the request")


async def abort_delay(sim: Proc, before: dict[str, Any], t_action: float) -> float:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stats = await sim_stats(sim)
        if stats["aborted"] > before["aborted"]:
            return stats["last_abort_monotonic"] - t_action
        await asyncio.sleep(0.01)
    raise AssertionError("the upstream never saw its connection close")


# -- streamed text, reasoning and tool calls ---------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", ["openai-chat-basic.sse", "deepseek-reasoning.sse", "openai-chat-toolcalls.sse"])
async def test_recorded_streams_accumulate_to_the_same_message(node, replay_gw, fixtures_dir, transport, name) -> None:
    want = recorded(fixtures_dir, name)
    (got,) = await run_node(
        node, [send(replay_gw, transport, "c-" + transport, "hi", body={"model": f"m@replay={name}"})]
    )
    assert got["error"] is None, got
    assert got["types"][:2] == ["start", "start-step"] and got["types"][-1] == "finish"
    assert text_of(got) == want["text"]
    assert text_of(got, "reasoning") == want["reasoning"]
    tools = [
        {"toolCallId": p["toolCallId"], "name": p["type"][5:], "input": p["input"], "state": p["state"]}
        for p in parts(got, "tool-")
    ]
    assert tools == [t | {"state": "input-available"} for t in want["tools"]]
    if want["tools"]:
        assert got["chunks"][-1]["finishReason"] == "tool-calls"
    meta = got["message"]["metadata"]
    assert meta["usage"]["total_tokens"] > 0 and meta["model"] == f"m@replay={name}"


async def test_sampling_params_and_model_from_the_body_reach_the_provider(node, relay, sim) -> None:
    (got,) = await run_node(
        node,
        [send(relay, "http", "c-params", "hello", body={"model": "gpt-4.1", "temperature": 0.3, "maxOutputTokens": 7})],
    )
    assert text_of(got) == expected("hello", 7)
    async with aiohttp.ClientSession() as s, s.get(sim.http + "/_sim/requests") as r:
        last = (await r.json())[-1]
    body = last.get("body", last)
    assert body["temperature"] == 0.3 and body["max_tokens"] == 7


# -- resume ------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_after_the_connection_is_cut_replays_exactly_once(node, relay, transport) -> None:
    n = 60
    model = {"model": "gpt-4.1@tps=100", "maxOutputTokens": n}
    cut, again = await run_node(
        node,
        [
            send(relay, transport, "c-cut", "resume me", body=model, cutAfter=6),
            reconnect(relay, transport, "c-cut"),
        ],
    )
    assert cut["cut"] and len(cut["chunks"]) == 6
    assert again["error"] is None, again
    assert again["types"].count("start") == 1 and again["types"][-1] == "finish"
    assert deltas(again) == text_of(again) == expected("resume me", n)  # every token once, in order
    assert again["message"]["id"] == cut["chunks"][0]["messageId"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_of_a_finished_reply_and_of_none(node, relay, transport) -> None:
    done, again, none = await run_node(
        node,
        [
            send(relay, transport, "c-done", "short", body={"maxOutputTokens": 5}),
            reconnect(relay, transport, "c-done"),
            reconnect(relay, transport, "c-never"),
        ],
    )
    assert text_of(again) == text_of(done) == expected("short", 5)
    assert again["chunks"] == done["chunks"]
    assert none == {"none": True}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_on_another_instance_over_redis(node, cluster, transport) -> None:
    a, b = cluster(2)
    n = 60
    cut, again = await run_node(
        node,
        [
            send(a, transport, "c-x", "elsewhere", body={"model": "gpt-4.1@tps=100", "maxOutputTokens": n}, cutAfter=6),
            reconnect(b, transport, "c-x"),
        ],
    )
    assert again["error"] is None, again
    assert again["types"].count("start") == 1 and again["types"][-1] == "finish"
    assert deltas(again) == expected("elsewhere", n)
    assert again["message"]["id"] == cut["chunks"][0]["messageId"]


# -- stop --------------------------------------------------------------------------------
async def _stop_via_http(node, sim: Proc, owner: Proc, stopper: Proc) -> tuple[float, dict[str, Any], dict[str, Any]]:
    steps = [send(owner, "http", "c-stop", "x", body={"model": "gpt-4.1@tps=50@tokens=1000"})]
    client = asyncio.ensure_future(run_node(node, steps))
    before = await until_active(sim)
    t = time.monotonic()
    async with aiohttp.ClientSession() as s, s.post(stopper.http + "/api/chat/c-stop/stop") as r:
        assert r.status == 200
        answer = await r.json()
    delay = await abort_delay(sim, before, t)
    (got,) = await client
    return delay, answer, got


async def test_stop_cancels_upstream_within_100ms(node, relay, sim) -> None:
    delay, answer, got = await _stop_via_http(node, sim, relay, relay)
    assert answer == {"stopped": True}
    assert got["types"][-1] == "abort" and got["error"] is None
    assert delay < 0.1, f"upstream closed {delay * 1000:.1f} ms after stop"


async def test_stop_from_another_instance_over_redis(node, cluster, sim) -> None:
    a, b = cluster(2)
    delay, answer, got = await _stop_via_http(node, sim, a, b)
    assert answer == {"stopped": True}
    assert got["types"][-1] == "abort"
    assert delay < 0.1, f"upstream closed {delay * 1000:.1f} ms after stop on the other instance"


async def test_ws_abort_cancels_upstream_within_100ms(node, relay, sim) -> None:
    before = await sim_stats(sim)
    (got,) = await run_node(
        node, [send(relay, "ws", "c-ab", "x", body={"model": "gpt-4.1@tps=50@tokens=1000"}, abortAfter=4)]
    )
    assert got["abortedAt"] is not None
    delay = await abort_delay(sim, before, got["abortedAt"])
    assert delay < 0.1, f"upstream closed {delay * 1000:.1f} ms after the SDK's abort"


async def test_ws_multiplexes_chats_on_one_socket(node, relay) -> None:
    (both,) = await run_node(
        node,
        [
            {
                "op": "parallel",
                "steps": [
                    send(relay, "ws", "c-one", "first", body={"model": "gpt-4.1@tps=200", "maxOutputTokens": 20}),
                    send(relay, "ws", "c-two", "second", body={"model": "gpt-4.1@tps=200", "maxOutputTokens": 25}),
                ],
            }
        ],
    )
    assert [text_of(r) for r in both] == [expected("first", 20), expected("second", 25)]


# -- bad input and ownership ---------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bad_input_is_a_clear_error(node, relay, transport) -> None:
    file_msg = [{"id": "u1", "role": "user", "parts": [{"type": "file", "mediaType": "image/png", "url": "data:,x"}]}]
    steps = [
        {"op": "send", "transport": transport, "url": url(relay, transport), "chatId": "c-bad", "messages": file_msg},
        send(relay, transport, "c-bad2", "x", body={"temperature": 7}),
    ]
    bad_file, bad_temperature = await run_node(node, steps)
    for got, needle in ((bad_file, '"file" part'), (bad_temperature, '"temperature" must be between 0 and 2')):
        message = got.get("requestError") or got.get("error")
        assert message and needle in message, got
    if transport == "http":
        assert (bad_file["statusCode"], bad_temperature["statusCode"]) == (400, 400)


async def test_a_chat_belongs_to_the_key_that_started_it(node, spawn, sim, tmp_path) -> None:
    db = tmp_path / "keys.db"
    alice, bob = create_key(db, "alice"), create_key(db, "bob")
    gw = spawn(
        "serve",
        "--port",
        "0",
        env={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": sim.http + "/v1", "TOKENWIRE_DB": str(db)},
    )
    body = {"model": "gpt-4.1@tps=100", "maxOutputTokens": 40}
    _cut, theirs, stop_theirs, mine = await run_node(
        node,
        [
            send(gw, "http", "c-key", "mine", body=body, cutAfter=4, key=alice),
            reconnect(gw, "http", "c-key", key=bob),
            {"op": "stop", "url": gw.http + "/api/chat", "chatId": "c-key", "key": bob},
            reconnect(gw, "http", "c-key", key=alice),
        ],
    )
    assert theirs == {"none": True}
    assert stop_theirs["status"] == 404
    assert deltas(mine) == expected("mine", 40)
    async with aiohttp.ClientSession() as s, s.get(gw.http + "/api/chat/c-key/stream") as r:
        assert r.status == 401  # no key at all


def test_the_sdk_under_test_is_the_pinned_one(node) -> None:
    lock = json.loads((JS / "package-lock.json").read_text())
    pinned = json.loads((JS / "package.json").read_text())["dependencies"]["ai"]
    assert installed_ai_version() == pinned == lock["packages"]["node_modules/ai"]["version"]
    assert os.path.exists(SCRIPT)


# -- the WebSocket frames as the transport's protocol defines them (lastSequence, no-active) --
def ws_send(rid: str, chat_id: str, prompt: str, body: dict[str, Any]) -> str:
    frame = {
        "type": "send",
        "requestId": rid,
        "id": chat_id,
        "trigger": "submit-message",
        "messageId": None,
        "messages": user(prompt),
        "headers": {},
        "body": body,
        "metadata": None,
    }
    return json.dumps(frame)


def ws_resume(rid: str, chat_id: str, last: int | None = None) -> str:
    frame = {"type": "resume", "requestId": rid, "id": chat_id, "headers": {}, "body": {}, "metadata": None}
    if last is not None:
        frame["lastSequence"] = last
    return json.dumps(frame)


async def frames_until(ws: aiohttp.ClientWebSocketResponse, rid: str, stop: Callable[[dict], bool]) -> list[dict]:
    out = []
    async with asyncio.timeout(20):
        while True:
            frame = json.loads((await ws.receive()).data)
            assert frame["requestId"] == rid, frame
            out.append(frame)
            if stop(frame):
                return out


async def test_ws_resume_with_last_sequence_sends_only_the_rest(relay) -> None:
    n = 50
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(relay.ws) as ws:
            await ws.send_str(ws_send("r1", "c-seq", "sequence", {"model": "gpt-4.1@tps=100", "maxOutputTokens": n}))
            first = await frames_until(ws, "r1", lambda f: f["type"] == "chunk" and f["sequence"] >= 7)
        # the socket is gone mid-reply; the reply goes on, and a new socket picks it up
        assert first[0] == {"type": "start", "requestId": "r1"}
        seen = [f for f in first if f["type"] == "chunk"]
        assert [f["sequence"] for f in seen] == list(range(8))
        async with s.ws_connect(relay.ws) as ws:
            await ws.send_str(ws_resume("r2", "c-seq", last=7))
            rest = await frames_until(ws, "r2", lambda f: f["type"] in ("end", "error"))
            assert rest[0] == {"type": "start", "requestId": "r2"} and rest[-1] == {"type": "end", "requestId": "r2"}
            more = rest[1:-1]
            assert [f["sequence"] for f in more] == list(range(8, 8 + len(more)))
            chunks = [f["chunk"] for f in seen + more]
            assert "".join(c["delta"] for c in chunks if c["type"] == "text-delta") == expected("sequence", n)
            assert chunks[-1]["type"] == "finish" and [c["type"] for c in chunks].count("start") == 1

            await ws.send_str(ws_resume("r3", "never-ran"))
            assert await frames_until(ws, "r3", lambda f: True) == [{"type": "no-active", "requestId": "r3"}]
            await ws.send_str(ws_send("r4", "c-bad", "x", {"maxOutputTokens": 0}))
            (err,) = await frames_until(ws, "r4", lambda f: True)
            assert err["type"] == "error" and "max_tokens" in err["errorText"]
            # protocol v1 still works on the same socket path
        async with s.ws_connect(relay.ws) as ws:
            await ws.send_str(
                json.dumps({"type": "chat", "id": "v", "content": "v1 still", "params": {"max_tokens": 3}})
            )
            async with asyncio.timeout(20):
                while (event := json.loads((await ws.receive()).data))["type"] != "end":
                    pass
            assert event["status"] == "completed"


async def test_a_new_message_for_a_chat_stops_its_running_reply(relay, sim) -> None:
    """Two POSTs for one chat (``regenerate`` while a reply streams, two tabs): the older reply is
    stopped at the provider, not left running where no stop or resume can reach it any more."""

    def body(model: str) -> dict[str, Any]:
        return {"id": "c-dup", "trigger": "submit-message", "messages": user("x"), "model": model}

    async with aiohttp.ClientSession() as s:
        first = await s.post(relay.http + "/api/chat", json=body("gpt-4.1@tps=50@tokens=1000"))
        assert first.status == 200
        before = await until_active(sim)
        async with s.post(relay.http + "/api/chat", json=body("gpt-4.1@tps=0@tokens=5")) as second:
            assert second.status == 200
            newer = await second.read()
        async with asyncio.timeout(10):
            older = await first.read()  # ends: it was stopped
        await abort_delay(sim, before, time.monotonic())
        async with s.post(relay.http + "/api/chat/c-dup/stop") as r:
            assert await r.json() == {"stopped": False}  # the newest reply had ended; nothing else runs
    assert b'"type":"abort"' in older and older.count(b'"type":"text-delta"') < 1000
    assert b'"type":"finish"' in newer and newer.count(b'"type":"text-delta"') == 5
    assert (await sim_stats(sim))["active"] == 0
