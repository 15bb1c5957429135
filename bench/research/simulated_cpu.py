"""CPU per token of the embedded simulated provider through the relay, in-process (no sockets).

N concurrent runs of a simulated model, each with a subscriber that drops what it gets, started
directly on a ``Gateway`` (as tests/unit do): what is left is the provider's pacing and the
relay's token loop, the part the simulated push path changed. The one script here that does not
use ``tokenwire simulate``: the embedded provider is what it measures. Process CPU / tokens, fixed
costs (begin, finish) included; run it under each tree's ``PYTHONPATH`` for an A/B.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from typing import Any

import orjson

from tokenwire.config import load_settings
from tokenwire.protocol import frames as fr
from tokenwire.runtime.gateway import Gateway
from tokenwire.upstream.simulated import SimulatedProvider


class _Drop:
    """A subscriber that never makes the relay wait."""

    def send(self, rest: bytes, kind: int, value: Any) -> None:
        return None


async def measure(streams: int, tokens: int, speed: float, model: str) -> tuple[int, float, float]:
    settings = load_settings(None, overrides={"host": "127.0.0.1", "port": 0, "db_path": ":memory:"})
    gw = Gateway(settings)
    provider = SimulatedProvider(speed=speed)
    runs = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        for i in range(streams):
            frame = {"type": "chat", "id": f"c{i}", "model": model, "content": "tell me a story"}
            frame["params"] = {"max_tokens": tokens}
            chat = fr.parse_frame(orjson.dumps(frame).decode(), gw.limits, 0)
            route = dataclasses.replace(gw.router.resolve(chat.model), provider=provider, plan=None)
            run = await gw.registry.begin(chat, route, None, False)
            run.subscribe(_Drop())
            runs.append(run)
        await asyncio.wait_for(asyncio.gather(*(r.ended.wait() for r in runs)), 600)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        return sum(r.gen.token_count for r in runs), cpu, wall
    finally:
        await gw.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=400)
    ap.add_argument("--tokens", type=int, default=200, help="tokens per reply")
    ap.add_argument("--speed", type=float, default=1.0, help="the provider's speed (0: unpaced)")
    ap.add_argument("--model", default="gpt-4.1")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = ap.parse_args()
    coro = measure(args.streams, args.tokens, args.speed, args.model)
    if args.loop == "uvloop":
        import uvloop

        toks, cpu, wall = uvloop.run(coro)
    else:
        toks, cpu, wall = asyncio.run(coro)
    print(
        f"{args.streams} x {args.tokens} tokens, speed {args.speed:g}, {args.loop}: {toks} tokens, "
        f"wall {wall:.2f} s, cpu {cpu:.2f} s, {1e6 * cpu / toks:.1f} µs cpu/token"
    )


if __name__ == "__main__":
    main()
