"""Hostile or broken input, from clients and from providers: a clear error, a bounded cost, never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from wsutil import WS

pytestmark = pytest.mark.hostile


def chunk(delta: dict, finish: str | None = None, usage: object = None) -> bytes:
    body: dict = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
    body["choices"][0]["finish_reason"] = finish
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


@pytest.fixture
def fixtures(tmp_path: Path) -> Path:
    folder = tmp_path / "fx"
    folder.mkdir()
    words = b"".join(chunk({"content": f"w{i} "}) for i in range(50))
    for name, usage in [
        ("negative.sse", {"prompt_tokens": -99_999_999, "completion_tokens": 3, "total_tokens": -99_999_996}),
        ("strings.sse", {"prompt_tokens": "12", "completion_tokens": "3", "total_tokens": "123"}),
        ("huge.sse", {"prompt_tokens": 1e300, "completion_tokens": 3}),
    ]:
        (folder / name).write_bytes(
            chunk({"content": "a"}) + chunk({"content": "b"}) + chunk({}, "stop", usage) + b"data: [DONE]\n\n"
        )
    (folder / "ignores-max-tokens.sse").write_bytes(words + chunk({}, "stop") + b"data: [DONE]\n\n")
    # one event that never ends: data lines and no blank line
    (folder / "endless-event.sse").write_bytes(chunk({"content": "ok"}) + b"data: x\n" * 150_000)
    return folder


@pytest.fixture
def hostile_relay(spawn, tmp_path: Path, fixtures: Path):
    sim = spawn("simulate", "--port", "0", "--fixtures", str(fixtures))
    return spawn(
        "serve",
        "--port",
        "0",
        env={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": sim.http + "/v1", "TOKENWIRE_DB": str(tmp_path / "h.db")},
    )


async def post(gw, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(gw.http + "/v1/chat/completions", json=body) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("name", ["negative.sse", "strings.sse", "huge.sse"])
async def test_unbelievable_usage_is_replaced_by_a_count(hostile_relay, name: str) -> None:
    async with await WS.connect(hostile_relay.ws) as ws:
        await ws.send({"type": "chat", "id": "u", "model": f"gpt-4.1@replay={name}", "content": "count me"})
        end = (await ws.until_end("u"))[-1]
    usage = end["usage"]
    assert end["status"] == "completed" and "usage_estimated" in end, end
    assert usage["completion_tokens"] == 2 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 2
    assert all(type(v) is int and v >= 0 for v in (usage["prompt_tokens"], usage["total_tokens"]))


async def test_a_provider_that_ignores_max_tokens_is_cut_there(hostile_relay) -> None:
    async with await WS.connect(hostile_relay.ws) as ws:
        await ws.send(
            {
                "type": "chat",
                "id": "m",
                "model": "gpt-4.1@replay=ignores-max-tokens.sse",
                "content": "x",
                "params": {"max_tokens": 5},
            }
        )
        events = await ws.until_end("m")
    tokens = [e["content"] for e in events if e["type"] == "token"]
    assert tokens == ["w0 ", "w1 ", "w2 ", "w3 ", "w4 "]
    assert events[-1]["status"] == "completed" and events[-1]["finish_reason"] == "length"


async def test_an_event_that_never_ends_fails_the_reply_not_the_memory(hostile_relay) -> None:
    async with await WS.connect(hostile_relay.ws) as ws:
        await ws.send({"type": "chat", "id": "e", "model": "gpt-4.1@replay=endless-event.sse", "content": "x"})
        events = await ws.until_end("e")
    err = next(e for e in events if e["type"] == "error")
    assert err["code"] == "upstream_bad_response" and "no blank line" in err["message"]
    assert events[-1]["status"] == "failed"


async def test_max_tokens_over_the_limit_is_refused_on_every_path(gateway) -> None:
    status, body = await post(
        gateway, {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1_000_000_000}
    )
    assert (
        status == 400 and "max_output_tokens" in body["error"]["message"] and "max_tokens" in body["error"]["message"]
    )
    async with await WS.connect(gateway.ws) as ws:
        await ws.send({"type": "chat", "id": "big", "content": "x", "params": {"max_tokens": 10**9}})
        err = await ws.recv()
    assert err["type"] == "error" and err["id"] == "big" and err["code"] == "bad_request"


async def test_a_million_character_word_does_not_hold_the_loop(gateway) -> None:
    """Cutting a word without spaces by repeated slicing was quadratic: 8.6 s of a blocked loop."""
    word = "a" * 1_000_000  # one "word": cut into pieces of 4
    t0 = time.monotonic()
    status, body = await post(
        gateway, {"model": "gpt-4.1", "messages": [{"role": "user", "content": word}], "max_tokens": 5}
    )
    took = time.monotonic() - t0
    assert status == 200 and body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["message"]["content"].startswith("You said: aaaa")
    assert took < 3.0, f"a reply to one long word took {took:.2f} s"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"stop": ["x"] * 100_000}, '"stop"'),
        ({"tools": [1, "x", None]}, "tools[0]"),
        ({"messages": [{"role": "user", "content": [1, {"type": "text", "text": 2}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 2}]}]}, "messages[0].content[0].text"),
    ],
    ids=["stop-list", "tools", "content-part", "content-text"],
)
async def test_wrong_shapes_get_a_400_naming_the_field(gateway, extra: dict, fragment: str) -> None:
    status, body = await post(gateway, {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}], **extra})
    assert status == 400 and fragment in body["error"]["message"], body


async def test_a_nul_in_a_static_name_is_a_404(gateway) -> None:
    async with aiohttp.ClientSession() as s, s.get(gateway.http + "/static/%00.js") as r:
        assert r.status == 404
