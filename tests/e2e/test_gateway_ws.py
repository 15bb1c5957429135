"""The WebSocket protocol against a real gateway process (embedded simulated models)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import orjson
import pytest
from wsutil import WS, text_of

from tokenwire.simulate.reply import reply_tokens


def expected(prompt: str, n: int) -> str:
    return "".join(reply_tokens([{"role": "user", "content": prompt}], n))


async def test_v1_chat_events_in_order(gateway) -> None:
    async with await WS.connect(gateway.ws) as ws:
        await ws.send(
            {"type": "chat", "id": "c1", "model": "deepseek-v3.2", "content": "Hello", "params": {"max_tokens": 12}}
        )
        events = await ws.until_end("c1")
    assert events[0]["type"] == "start"
    assert events[0]["model"] == "deepseek-v3.2" and events[0]["provider"] == "simulated"
    assert events[0]["simulated"] is True and events[0]["conversation_id"]
    tokens = [e for e in events if e["type"] == "token"]
    assert [e["seq"] for e in tokens] == list(range(1, 13))
    assert text_of(events) == expected("Hello", 12)
    end = events[-1]
    assert end["status"] == "completed" and end["finish_reason"] == "stop" and end["seq"] == 13
    assert end["usage"]["completion_tokens"] == 12 and end["usage"]["prompt_tokens"] > 0
    assert end["timing"]["ttft_ms"] > 0 and end["timing"]["tokens_per_s"] > 0
    assert end["cost_usd"] == pytest.approx((end["usage"]["prompt_tokens"] * 0.28 + 12 * 0.42) / 1e6)


@pytest.mark.serial  # interleaving needs the generations to overlap in time
async def test_several_generations_share_one_socket(gateway) -> None:
    async with await WS.connect(gateway.ws) as ws:
        prompts = {f"g{i}": f"prompt number {i}" for i in range(5)}
        for i, (gid, prompt) in enumerate(prompts.items()):
            model = ["gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2", "gpt-4.1"][i]
            await ws.send(
                {
                    "type": "chat",
                    "id": gid,
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "params": {"max_tokens": 20},
                }
            )
        by_id: dict[str, list[dict]] = {gid: [] for gid in prompts}
        ended = 0
        interleaved = False
        last = None
        while ended < len(prompts):
            event = await ws.recv()
            by_id[event["id"]].append(event)
            if last is not None and event["id"] != last and event["type"] == "token":
                interleaved = True
            last = event["id"]
            ended += event["type"] == "end"
    assert interleaved, "generations ran concurrently, not one after another"
    for gid, prompt in prompts.items():
        assert text_of(by_id[gid]) == expected(prompt, 20)
        assert [e["seq"] for e in by_id[gid]] == list(range(22))


async def test_cancel_one_leaves_the_other_running(spawn, tmp_path) -> None:
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": ":memory:", "TOKENWIRE_SIMULATED_SPEED": "2"})
    async with await WS.connect(gw.ws) as ws:
        for gid in ("a", "b"):
            await ws.send(
                {
                    "type": "chat",
                    "id": gid,
                    "model": "gpt-4.1",
                    "content": gid,
                    "conversation_id": f"conv-{gid}",
                    "params": {"max_tokens": 40},
                }
            )
        seen = {"a": [], "b": []}
        while len([e for e in seen["a"] if e["type"] == "token"]) < 3:
            e = await ws.recv()
            seen[e["id"]].append(e)
        await ws.send({"type": "cancel", "id": "a"})
        ws.backlog["b"] = seen["b"]
        seen["a"] += await ws.until_end("a")
        # b is still streaming
        b_events = await ws.until_end("b")
    end_a = seen["a"][-1]
    assert end_a["status"] == "cancelled" and end_a["reason"] == "cancelled"
    assert 3 <= end_a["usage"]["completion_tokens"] < 40
    assert b_events[-1]["status"] == "completed"
    assert text_of(b_events) == expected("b", 40)


async def test_pause_stops_tokens_and_resume_loses_nothing(spawn) -> None:
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": ":memory:", "TOKENWIRE_SIMULATED_SPEED": "4"})
    async with await WS.connect(gw.ws) as ws:
        await ws.send(
            {
                "type": "chat",
                "id": "p",
                "model": "gemini-2.5-flash",
                "content": "pause me",
                "params": {"max_tokens": 60},
            }
        )
        events = []
        while len([e for e in events if e["type"] == "token"]) < 5:
            events.append(await ws.recv())
        await ws.send({"type": "pause"})
        # tokens already in flight may still arrive; then silence (0.3 s without a frame)
        while True:
            try:
                events.append(await ws.recv(timeout=0.3))
            except TimeoutError:
                break
        count_paused = len(events)
        # Stays a sleep: silence can only be shown by waiting. At 4x speed a token would come every ~4 ms
        # (~270 tokens/s): 1.2 s of silence in all is hundreds of times that.
        await asyncio.sleep(1.0)
        with pytest.raises(asyncio.TimeoutError):
            await ws.recv(timeout=0.2)
        assert len(events) == count_paused
        assert events[-1]["type"] == "token", "not ended while paused"
        await ws.send({"type": "resume"})
        events += await ws.until_end("p")
    assert text_of(events) == expected("pause me", 60)
    assert [e["seq"] for e in events] == list(range(62))


async def test_pause_one_generation_by_id(spawn) -> None:
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": ":memory:", "TOKENWIRE_SIMULATED_SPEED": "4"})
    async with await WS.connect(gw.ws) as ws:
        for gid in ("x", "y"):
            await ws.send(
                {
                    "type": "chat",
                    "id": gid,
                    "model": "gpt-4.1",
                    "messages": [{"role": "user", "content": gid}],
                    "params": {"max_tokens": 30},
                }
            )
        await ws.send({"type": "pause", "id": "x"})
        y_events = await ws.until_end("y")  # y completes while x is held
        assert y_events[-1]["status"] == "completed"
        await ws.send({"type": "resume", "id": "x"})
        x_events = await ws.until_end("x")
    assert text_of(x_events) == expected("x", 30)


async def test_ping_pong_and_seed002_dialect(gateway) -> None:
    async with await WS.connect(gateway.ws) as ws:
        await ws.send({"type": "ping"})
        assert await ws.recv() == {"type": "pong"}
        await ws.send({"content": "สวัสดีครับ", "system": "คุณเป็นผู้ช่วย AI"})
        first = await ws.until_end("g0")
        await ws.send({"content": "second turn", "system": "คุณเป็นผู้ช่วย AI"})
        second = await ws.until_end("g1")
    assert [e["type"] for e in first][:2] == ["start", "token"]
    assert text_of(first).startswith("You said: สวัสดีครับ")
    assert first[0]["conversation_id"] == second[0]["conversation_id"], "one conversation per socket"
    assert second[-1]["usage"]["prompt_tokens"] > first[-1]["usage"]["prompt_tokens"], "history was sent"


async def test_seed000_openai_dialect(gateway) -> None:
    # Exactly what seed 000's HolySheepStreamingClient sends, on /v1/ws/chat with ?key=
    url = gateway.ws.replace("/ws/chat", "/v1/ws/chat") + "?key=hs_test"
    async with await WS.connect(url) as ws:
        await ws.send(
            {
                "model": "gpt-4.1",
                "messages": [{"role": "user", "content": "อธิบาย WebSocket"}],
                "stream": True,
                "max_tokens": 10,
            }
        )
        chunks = []
        while True:
            data = await ws.recv()
            chunks.append(data)
            if data["choices"] and data["choices"][0]["finish_reason"] == "stop":
                break
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == expected("อธิบาย WebSocket", 10)
    assert chunks[-1]["usage"]["completion_tokens"] == 10


async def test_seed000_dialect_error_is_openai_shaped(gateway) -> None:
    async with await WS.connect(gateway.ws) as ws:
        await ws.send({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}], "stream": True})
        event = await ws.recv()
    assert event["type"] == "error"  # the flat shape on the socket
    assert event["code"] == "unknown_model" and "gpt-4.1" in event["message"]


@pytest.mark.parametrize(
    ("frame", "code", "needle"),
    [
        ("{not json", "invalid_json", "not valid JSON"),
        ("[1,2]", "bad_request", "JSON object"),
        ('{"type":"dance"}', "unknown_type", "dance"),
        ('{"type":7}', "bad_request", "string"),
        ('{"type":"chat","id":"q"}', "bad_request", "messages"),
        ('{"type":"chat","id":"q","messages":"hi"}', "bad_request", "list"),
        ('{"type":"chat","id":"q","messages":[{"role":"wizard","content":"x"}]}', "bad_request", "role"),
        ('{"type":"chat","id":"q","content":5}', "bad_request", "string"),
        ('{"type":"chat","id":"q","content":"x","params":{"temperature":"hot"}}', "bad_request", "temperature"),
        ('{"type":"chat","id":"q","content":"x","params":{"evil":1}}', "bad_request", "unknown parameter"),
        ('{"type":"chat","id":"q","content":"x","model":"gpt-9"}', "unknown_model", "gpt-9"),
        ('{"type":"cancel"}', "bad_request", "id"),
        ('{"type":"cancel","id":"nope"}', "not_found", "nope"),
        ('{"hello":1}', "bad_request", "type"),
    ],
)
async def test_bad_input_gets_clear_error_and_socket_stays_open(gateway, frame, code, needle) -> None:
    async with await WS.connect(gateway.ws) as ws:
        await ws.send(frame)
        err = await ws.recv()
        assert err["type"] == "error" and err["code"] == code, err
        assert needle in err["message"] and err["retryable"] is False
        assert "Traceback" not in err["message"]
        if '"id":"q"' in frame:
            assert err["id"] == "q"
        await ws.send({"type": "ping"})
        assert (await ws.recv())["type"] == "pong"


async def test_binary_and_oversized_frames(spawn) -> None:
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": ":memory:", "TOKENWIRE_MAX_FRAME_BYTES": "4096"})
    async with await WS.connect(gw.ws) as ws:
        await ws.ws.send_bytes(b"\x00\x01binary")
        err = await ws.recv()
        assert err["code"] == "unsupported_frame"
        await ws.send({"type": "chat", "id": "big", "content": "x" * 5000})
        err = await ws.recv()
        assert err["code"] == "frame_too_large" and "4096" in err["message"]
        await ws.send({"type": "chat", "id": "ok", "content": "small", "params": {"max_tokens": 3}})
        assert (await ws.until_end("ok"))[-1]["status"] == "completed"


async def test_content_frames_share_the_socket_conversation_one_at_a_time(gateway) -> None:
    async with await WS.connect(gateway.ws) as ws:
        await ws.send({"type": "chat", "id": "a", "content": "first", "params": {"max_tokens": 20}})
        await ws.send({"type": "chat", "id": "b", "content": "second"})
        a = await ws.until_end("a")
        (busy,) = ws.backlog.pop("b")
    assert busy["code"] == "conversation_busy" and busy["retryable"] is True
    assert a[-1]["status"] == "completed"


async def test_duplicate_running_id_refused(gateway) -> None:
    async with await WS.connect(gateway.ws) as ws:
        await ws.send({"type": "chat", "id": "d", "content": "one", "params": {"max_tokens": 30}})
        await ws.send({"type": "chat", "id": "d", "messages": [{"role": "user", "content": "two"}]})
        events = []
        while not any(e.get("type") == "end" for e in events):
            events.append(await ws.recv())
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "duplicate_id" and errors[0]["id"] == "d"
    assert text_of(events) == expected("one", 30)


async def test_idle_socket_closed_with_code(spawn) -> None:
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": ":memory:", "TOKENWIRE_IDLE_TIMEOUT": "0.5"})
    async with aiohttp.ClientSession() as session, session.ws_connect(gw.ws) as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 4000 and msg.extra == "idle timeout"


async def test_websocket_ping_pong_heartbeat(spawn) -> None:
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": ":memory:", "TOKENWIRE_WS_PING_INTERVAL": "0.2"})
    async with aiohttp.ClientSession() as session, session.ws_connect(gw.ws, autoping=False) as ws:
        t0 = time.monotonic()
        msg = await ws.receive(timeout=3)
        assert msg.type == aiohttp.WSMsgType.PING  # the server pings a silent socket
        pinged = time.monotonic() - t0
        # we never answer: the server must give up on us, without a close handshake (a dead peer)
        kinds = []
        while True:
            msg = await ws.receive(timeout=3)
            kinds.append(msg.type)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
        dropped = time.monotonic() - t0
    assert 0.15 <= pinged <= 0.6
    assert 0.35 <= dropped <= 1.5, dropped  # two silent intervals (+ one sweep), not one
    assert aiohttp.WSMsgType.CLOSE not in kinds


async def test_any_client_frame_keeps_the_socket_alive(spawn) -> None:
    """A client that never answers WebSocket pings but talks (browsers cannot see pings) stays."""
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": ":memory:", "TOKENWIRE_WS_PING_INTERVAL": "0.2"})
    async with aiohttp.ClientSession() as session, session.ws_connect(gw.ws, autoping=False) as ws:
        pongs = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:  # 7 intervals
            await ws.send_str('{"type":"ping"}')
            msg = await ws.receive(timeout=1)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            assert json.loads(msg.data) == {"type": "pong"}
            pongs += 1
            # Stays a sleep: the behaviour under test is a client that talks now and then. Every 0.05 s is
            # 8x inside the 0.4 s (two ping intervals) after which a silent socket is dropped, and 10 pongs
            # need 0.5 s of the 1.5 s loop (3x).
            await asyncio.sleep(0.05)
        assert pongs >= 10 and not ws.closed
        # and a client that answers the server's pings (aiohttp's autoping) stays too
    async with aiohttp.ClientSession() as session, session.ws_connect(gw.ws) as ws:
        with contextlib.suppress(asyncio.TimeoutError):  # (receive's own timeout restarts at each ping)
            msg = await asyncio.wait_for(ws.receive(), 1.2)
            raise AssertionError(f"socket closed: {msg}")
        assert not ws.closed
        await ws.send_str('{"type":"ping"}')
        assert json.loads((await ws.receive(timeout=2)).data) == {"type": "pong"}


async def test_http_endpoints(gateway) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.http + "/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(gateway.http + "/v1/models") as r:
            models = {m["id"]: m for m in (await r.json())["data"]}
        assert set(models) == {"gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2"}
        assert all(m["simulated"] and m["provider"] == "simulated" for m in models.values())
        assert models["deepseek-v3.2"]["pricing"]["output_per_mtok"] == 0.42
        async with s.get(gateway.http + "/ws/chat") as r:
            assert r.status == 426 and "WebSocket" in await r.text()
        async with s.post(gateway.http + "/v1/chat/completions", data=b"{bad") as r:
            body = await r.json()
            assert r.status == 400 and body["error"]["code"] == "invalid_json"


async def test_no_traceback_on_garbage_handshake(gateway) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    # (a Host of ours: an unknown one is refused with 403 first, see e2e/test_host_check.py)
    writer.write(b"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 400") and b"Traceback" not in head
    out = orjson.dumps(gateway.text())
    assert b"Traceback" not in out


async def test_idle_time_counts_from_the_end_of_the_last_reply(spawn) -> None:
    """A reply longer than idle_timeout is not followed at once by an idle close."""
    env = {"TOKENWIRE_DB": ":memory:", "TOKENWIRE_IDLE_TIMEOUT": "0.6", "TOKENWIRE_SIMULATED_SPEED": "1"}
    gw = spawn("serve", "--port", "0", env=env)
    async with await WS.connect(gw.ws) as ws:
        await ws.send(
            {"type": "chat", "id": "long", "model": "deepseek-v3.2", "content": "x", "params": {"max_tokens": 60}}
        )
        events = await ws.until_end("long", timeout=10)  # ~1 s at the seed's speed: past idle_timeout
        assert events[-1]["status"] == "completed"
        t_end = time.monotonic()
        msg = await ws.ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4000
        assert time.monotonic() - t_end >= 0.45  # a full idle period after the end, not one sweep
