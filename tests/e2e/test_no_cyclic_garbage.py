"""Serving chats leaves no reference cycles behind: what a socket, a request or a reply used is
freed by reference counting when it ends, in every dialect.

A cycle per socket (the connection calling back into its session) or per reply (an upstream
response and its httptools parser) leaves the socket's or the reply's whole object graph to
CPython's cyclic collector, whose full passes a serving process runs rarely (server/heap.py:
each stops the event loop for ~100 ms at 1,000 streams), so such garbage would pile up. The
gateway runs here with ``gc.DEBUG_SAVEALL`` (from a ``sitecustomize`` on its path): everything
the collector would have freed is kept and counted by type when it exits.
"""

from __future__ import annotations

import json
import os
import signal

import aiohttp
import orjson
import pytest
from test_sse_slow_consumer import start_gateway

HOOK = """
import atexit, collections, gc, json, os, sys
if "serve" in sys.argv:
    gc.set_debug(gc.DEBUG_SAVEALL)

    def census():
        gc.collect()
        kinds = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
        with open(os.environ["GARBAGE_CENSUS"], "w") as f:
            json.dump(kinds, f)

    atexit.register(census)
"""
MSGS = [{"role": "user", "content": "x"}]
ROUNDS = 6  #: of each dialect: a cycle per socket or per reply shows up (at least) this many times
#: dialect path -> a streamed request of a short reply, and what its last line says
SSE = {
    "/v1/chat/completions": ({"model": "fast-1", "messages": MSGS, "max_tokens": 5, "stream": True}, b"[DONE]"),
    "/v1/messages": ({"model": "fast-1", "messages": MSGS, "max_tokens": 5, "stream": True}, b"message_stop"),
    "/v1/responses": (
        {"model": "fast-1", "input": "x", "max_output_tokens": 5, "stream": True, "store": False},
        b"response.completed",
    ),
    "/api/chat": (
        {
            "id": "c1",
            "trigger": "submit-message",
            "model": "fast-1",
            "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "x"}]}],
        },
        b"[DONE]",
    ),
}


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_sockets_requests_and_replies_leave_no_cyclic_garbage(spawn, tmp_path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    census = tmp_path / "garbage.json"
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    real_spawn = spawn

    def spawn_hooked(*args, env=None, **kw):  # the gateway alone, in a fresh interpreter (not forked: PYTHONPATH)
        if args[0] == "serve":
            env = {**(env or {}), "PYTHONPATH": path, "GARBAGE_CENSUS": str(census)}
        return real_spawn(*args, env=env, **kw)

    gw = start_gateway(spawn_hooked, tmp_path)
    async with aiohttp.ClientSession() as http:
        for i in range(ROUNDS):
            async with http.ws_connect(gw.ws) as ws:  # protocol v1: a socket per reply
                chat = {"type": "chat", "id": f"c{i}", "model": "fast-1", "content": "x"}
                await ws.send_str(orjson.dumps(chat).decode())
                async for msg in ws:
                    if orjson.loads(msg.data)["type"] == "end":
                        break
            async with http.ws_connect(gw.http.replace("http", "ws", 1) + "/v1/responses") as ws:
                await ws.send_str(orjson.dumps({"type": "response.create", "model": "fast-1", "input": "x"}).decode())
                async for msg in ws:
                    if '"response.completed"' in msg.data:
                        break
            for route, (body, last) in SSE.items():
                async with http.post(gw.http + route, json=body) as r:
                    text = await r.read()
                    assert r.status == 200 and last in text, (route, r.status, text[-300:])
    assert gw.stop(signal.SIGTERM) == 0
    kinds = json.loads(census.read_text())
    ours = {k: n for k, n in kinds.items() if k.startswith(("tokenwire.", "aiohttp.", "httptools.", "multidict."))}
    ours.pop("tokenwire.bench.loadtest._HelpFormatter", None)  # start-up: the command line's help, once
    per_use = {k: n for k, n in ours.items() if n >= ROUNDS}
    assert per_use == {}, f"left for the cyclic collector (type: objects): {per_use}"
    assert sum(kinds.values()) < 5000, "start-up garbage only"
