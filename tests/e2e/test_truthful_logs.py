"""Logs that tell the truth: a gone SSE client is a cancelled run, a non-SSE 200 is named as such,
and a run that failed before any token carries no price (against real gateway processes)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web
from eventually import aeventually
from wsutil import WS

pytestmark = pytest.mark.hostile


def generation_lines(proc: Any) -> list[dict[str, Any]]:
    out = []
    for line in proc.text().splitlines():
        if line.startswith("{") and '"event":"generation"' in line.replace(" ", ""):
            out.append(orjson.loads(line))
    return out


async def test_an_sse_client_that_leaves_is_logged_cancelled_client_gone(relay) -> None:
    gateway = relay  # a provider that sends 2,000 tokens at 200 tokens/s
    body = orjson.dumps(
        {"model": "gpt-4.1@tps=200@tokens=2000", "messages": [{"role": "user", "content": "long"}], "stream": True}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    got = b""
    while got.count(b"data: ") < 5:  # a few tokens, then the client goes away
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, got
        got += chunk
    writer.transport.abort()
    lines = await aeventually(lambda: generation_lines(gateway), timeout=10, message="no generation log line")
    line = lines[-1]
    assert line["status"] == "cancelled" and line["reason"] == "client_gone", line
    assert line["tokens"] < 2000, line


@pytest.fixture
async def odd_upstream():
    """An OpenAI-shaped provider that answers 200 with something that is not an event stream."""

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        what = body["messages"][-1]["content"]
        if what == "html":
            return web.Response(text="<html><body>502 Bad Gateway (nginx)</body></html>", content_type="text/html")
        reply = {"id": "x", "object": "chat.completion", "choices": [{"message": {"content": "hi"}}]}
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


@pytest.mark.parametrize(("what", "ctype"), [("html", "text/html"), ("json", "application/json")])
async def test_a_200_that_is_not_an_event_stream_is_named_and_unpriced(spawn, tmp_path, odd_upstream, what, ctype):
    gw = spawn(
        "serve",
        "--port",
        "0",
        env={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": odd_upstream, "TOKENWIRE_DB": str(tmp_path / "o.db")},
    )
    async with await WS.connect(gw.ws) as ws:
        await ws.send({"type": "chat", "id": "a", "model": "gpt-4.1", "content": what})
        events = await ws.until_end("a")
    end = events[-1]
    errors = [e for e in events if e.get("type") == "error"]
    assert end["status"] == "failed", events
    assert errors and errors[0]["code"] == "upstream_bad_response", events
    assert ctype in errors[0]["message"] and "before it finished" not in errors[0]["message"], errors
    assert "cost_usd" not in end, end  # 0 tokens, refused: nothing to pay
    lines = await aeventually(lambda: generation_lines(gw), timeout=5)
    assert lines[-1]["status"] == "failed" and lines[-1]["error"]["code"] == "upstream_bad_response", lines
    assert "cost_usd" not in lines[-1], lines[-1]
