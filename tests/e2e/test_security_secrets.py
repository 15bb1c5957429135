"""Provider keys never reach a client, a log line or an error message, even when the upstream echoes them."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web
from wsutil import WS

PROVIDER_KEY = "sk-proj-NEVER-SHOW-THIS-7f3a9c2e51d04b8e"


async def hostile_upstream() -> tuple[web.AppRunner, str]:
    """An OpenAI-compatible upstream that puts the key it was sent into every error it can."""

    async def chat(request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        model = (await request.json())["model"]
        blurt = f"Incorrect API key provided: {key}. Header was Authorization: Bearer {key}"
        if model == "leak-401":
            return web.json_response({"error": {"message": blurt, "type": "invalid_request_error"}}, status=401)
        if model == "leak-400":
            return web.json_response({"error": {"message": blurt, "code": key}}, status=400)
        if model == "leak-429":
            return web.json_response({"error": {"message": blurt}}, status=429, headers={"Retry-After": "1"})
        if model == "leak-500":
            return web.Response(text=blurt, status=500)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if model == "leak-stream":
            await resp.write(b"data: " + orjson.dumps({"error": {"message": blurt}}) + b"\n\n")
        elif model == "leak-malformed":
            await resp.write(b"data: {" + blurt.encode() + b"\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1"


MODELS = ["leak-401", "leak-400", "leak-429", "leak-500", "leak-stream", "leak-malformed"]


@pytest.mark.parametrize("log_level", ["debug"])
async def test_provider_key_never_leaks(spawn, tmp_path, log_level) -> None:
    runner, base = await hostile_upstream()
    try:
        gw = spawn(
            "serve",
            "--port",
            "0",
            "--log-level",
            log_level,
            env={"OPENAI_API_KEY": PROVIDER_KEY, "OPENAI_BASE_URL": base, "TOKENWIRE_DB": str(tmp_path / "g.db")},
        )
        received: list[bytes] = []
        errors = 0
        async with await WS.connect(gw.ws) as ws:
            for model in MODELS:
                msgs = [{"role": "user", "content": "x"}]
                await ws.send({"type": "chat", "id": model, "model": model, "messages": msgs})
                events = await ws.until_end(model)
                received += [orjson.dumps(e) for e in events]
                errors += sum(e["type"] == "error" for e in events)
            # seed 000's OpenAI-shaped dialect on the same socket
            await ws.send({"model": "leak-401", "messages": [{"role": "user", "content": "x"}], "stream": True})
            received.append(orjson.dumps(await ws.recv()))
        async with aiohttp.ClientSession() as s:
            for model in MODELS:
                for stream in (False, True):
                    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": stream}
                    async with s.post(gw.http + "/v1/chat/completions", json=body) as r:
                        received.append(await r.read())
                        received.append(str(r.headers).encode())
                    # the Anthropic Messages dialect: its error bodies and in-stream error events
                    async with s.post(gw.http + "/v1/messages", json={**body, "max_tokens": 5}) as r:
                        received.append(await r.read())
                        received.append(str(r.headers).encode())
            async with s.get(gw.http + "/v1/models") as r:
                received.append(await r.read())
            async with s.get(gw.http + "/healthz") as r:
                received.append(await r.read())
        everything = b"".join(received)
        assert errors >= len(MODELS) and b"Incorrect API key provided" in everything  # the errors did come
        assert PROVIDER_KEY.encode() not in everything
        assert PROVIDER_KEY[8:30].encode() not in everything
        gw.stop()
        output = gw.text()
        assert PROVIDER_KEY not in output and "Traceback" not in output
    finally:
        await runner.cleanup()
