"""Gateway CPU per relayed token for each client dialect, end to end, in one sitting.

One gateway process relays ``tokenwire simulate --fast`` (one token per upstream SSE chunk) to
N concurrent clients of one dialect at a time; the dialects take turns, round after round, so
machine drift hits them alike. Each figure is the gateway's user+sys CPU (from /proc) over the
tokens relayed; the table gives each dialect's median and its difference from protocol v1's.

    python bench/research/dialect_relay_cpu.py --streams 20 --tokens 2000 --rounds 5

The clients are aiohttp in this process (their CPU is not counted). Unlike
``bench/dialect_cpu.py`` (the encoders alone), this includes each path's I/O: a WebSocket
frame per token for v1 and the Responses API's WebSocket mode, an SSE write per token for the
HTTP dialects.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from _common import cpu_seconds, gateway_tree, simulate, start

PROMPT = [{"role": "user", "content": "bench"}]


async def v1(session: aiohttp.ClientSession, base: str, model: str, tokens: int) -> int:
    async with session.ws_connect(base.replace("http", "ws", 1) + "/ws/chat") as ws:
        await ws.send_str(orjson.dumps({"type": "chat", "id": "b", "model": model, "content": "bench"}).decode())
        n = 0
        async for msg in ws:
            event = orjson.loads(msg.data)
            if event["type"] == "token":
                n += 1
            elif event["type"] in ("end", "error"):
                if event.get("status") != "completed":
                    raise RuntimeError(f"v1: {event}")
                return n
    raise RuntimeError("v1: socket closed early")


def sse(path: str, body: Callable[[str, int], dict], marker: bytes) -> Callable[..., Awaitable[int]]:
    """A streamed HTTP dialect: POST ``body`` to ``path``; count the lines that carry ``marker``."""

    async def run(session: aiohttp.ClientSession, base: str, model: str, tokens: int) -> int:
        n = 0
        async with session.post(base + path, json=body(model, tokens)) as r:
            if r.status != 200:
                raise RuntimeError(f"{path}: HTTP {r.status} {(await r.text())[:200]}")
            async for line in r.content:
                if marker in line:
                    n += 1
        return n

    return run


async def responses_ws(session: aiohttp.ClientSession, base: str, model: str, tokens: int) -> int:
    """The Responses API's WebSocket mode: one ``response.create``, its events one per frame."""
    async with session.ws_connect(base.replace("http", "ws", 1) + "/v1/responses") as ws:
        create = {"type": "response.create", "model": model, "input": "bench", "store": False}
        await ws.send_str(orjson.dumps(create).decode())
        n = 0
        async for msg in ws:
            if b'"type":"response.output_text.delta"' in msg.data.encode():
                n += 1
            elif '"type":"response.completed"' in msg.data:
                return n
            elif '"type":"response.' not in msg.data:
                raise RuntimeError(f"responses ws: {msg.data[:200]}")
    raise RuntimeError("responses ws: socket closed early")


DIALECTS: dict[str, Callable[..., Awaitable[int]]] = {
    "v1 (WebSocket)": v1,
    "openai chat (SSE)": sse(
        "/v1/chat/completions",
        lambda m, n: {"model": m, "messages": PROMPT, "stream": True},
        b'"delta":{"content":',
    ),
    "anthropic messages (SSE)": sse(
        "/v1/messages",
        lambda m, n: {"model": m, "max_tokens": n, "messages": PROMPT, "stream": True},
        b'"type":"text_delta"',
    ),
    "openai responses (SSE)": sse(
        "/v1/responses",
        lambda m, n: {"model": m, "input": "bench", "stream": True, "store": False},
        b"event: response.output_text.delta",
    ),
    "openai responses (WebSocket)": responses_ws,
    "ai sdk ui stream (SSE)": sse(
        "/api/chat",
        lambda m, n: {
            "id": "bench",
            "trigger": "submit-message",
            "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "bench"}]}],
            "model": m,
        },
        b'"type":"text-delta"',
    ),
}


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    sim = simulate("--fast")
    gw = start(
        ["serve", "--port", "0", "--log-level", "warning"],
        env={"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": sim.http + "/v1", "TOKENWIRE_DB": ":memory:"},
    )
    results: dict[str, list[float]] = {name: [] for name in DIALECTS}
    model = f"gpt-4.1@tokens={args.tokens}@tps=0"
    try:
        async with aiohttp.ClientSession() as session:
            for name, run in DIALECTS.items():  # warm-up, and a check that each path relays it all
                got = await run(session, gw.http, "gpt-4.1@tokens=20@tps=0", 20)
                if got != 20:
                    raise RuntimeError(f"{name}: counted {got} of 20 tokens")
            for r in range(args.rounds):
                for name, run in DIALECTS.items():
                    c0 = cpu_seconds(gw.pid)
                    t0 = time.perf_counter()
                    counts = await asyncio.gather(
                        *(run(session, gw.http, model, args.tokens) for _ in range(args.streams))
                    )
                    cpu, wall = cpu_seconds(gw.pid) - c0, time.perf_counter() - t0
                    n = sum(counts)
                    if n != args.streams * args.tokens:
                        raise RuntimeError(f"{name}: expected {args.streams * args.tokens} tokens, got {n}")
                    results[name].append(cpu / n * 1e6)
                    print(f"round {r + 1}: {name:<30} {cpu / n * 1e6:6.2f} us/token ({wall:.2f} s wall)", flush=True)
    finally:
        gw.stop()
        sim.stop()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=20, help="concurrent clients per round")
    p.add_argument("--tokens", type=int, default=2000, help="tokens per reply")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    print(f"gateway under test: {gateway_tree()}", flush=True)
    results = asyncio.run(measure(args))
    base = statistics.median(results["v1 (WebSocket)"])
    print(f"\ngateway CPU per relayed token, median of {args.rounds} rounds ({args.streams} streams x {args.tokens}):")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"  {name:<30} {med:6.2f} us/token   ({med - base:+.2f} vs v1)")


if __name__ == "__main__":
    main()
