"""What Redis costs per relayed token: gateway CPU µs and Redis commands per token.

Runs the same load twice against ``tokenwire simulate``: once with the embedded
default (no Redis) and once with ``TOKENWIRE_REDIS_URL`` pointing at a private
``redis-server`` started on a free port (so its ``INFO commandstats`` counts
only this benchmark). Every generation is resumable (it has a ``stream_id``),
so with Redis every event is shipped to a Redis Stream.

Reported per relayed token: gateway CPU (user + sys from /proc/PID/stat),
Redis commands (``INFO commandstats`` delta, by command), Redis round trips
(pipelines; ``total_commands_processed`` cannot tell them apart, so the
gateway's own count is not used: the figure is commands), and Redis server CPU.

    python bench/research/redis_cost.py --streams 20 --tokens 2000 --rounds 3
    python bench/research/redis_cost.py --streams 100 --tokens 200 --tps 50 --rounds 1   # paced, like real models
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import aiohttp
import orjson
from _common import cpu_seconds, simulate, start
from redisutil import RedisServer


async def one_stream(session: aiohttp.ClientSession, url: str, model: str, tokens: int, follow: str | None) -> int:
    sid = uuid.uuid4().hex
    async with session.ws_connect(url) as ws:
        await ws.send_str(
            orjson.dumps(
                {
                    "type": "chat",
                    "id": "b",
                    "model": model,
                    "messages": [{"role": "user", "content": "bench"}],
                    "params": {"max_tokens": tokens},
                    "stream_id": sid,
                }
            ).decode()
        )
        follower = None
        n = 0
        async for msg in ws:
            event = orjson.loads(msg.data)
            kind = event.get("type")
            if kind == "start" and follow is not None:
                # a second client following the stream through another instance
                follower = asyncio.create_task(_follow(session, follow, sid))
            elif kind == "token":
                n += 1
            elif kind == "end":
                if event["status"] != "completed":
                    raise RuntimeError(f"generation ended {event}")
                break
            elif kind == "error":
                raise RuntimeError(f"error: {event}")
        if follower is not None and await follower != n:
            raise RuntimeError("the follower did not get every token")
        return n


async def _follow(session: aiohttp.ClientSession, url: str, sid: str) -> int:
    async with session.ws_connect(url) as ws:
        await ws.send_str(orjson.dumps({"type": "attach", "id": "f", "stream_id": sid, "last_seq": -1}).decode())
        n = 0
        async for msg in ws:
            event = orjson.loads(msg.data)
            if event["type"] == "token":
                n += 1
            elif event["type"] in ("end", "error"):
                if event["type"] == "error":
                    raise RuntimeError(f"follower error: {event}")
                return n
    raise RuntimeError("follower socket closed early")


async def redis_info(port: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    r = aioredis.Redis(port=port)
    try:
        stats = await r.info("commandstats")
        cpu = await r.info("cpu")
    finally:
        await r.aclose()
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    return {"calls": calls, "cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"]}


async def measure(args: argparse.Namespace, redis: RedisServer | None) -> dict[str, Any]:
    sim = simulate("--fast", "--batch", str(args.batch))
    env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": sim.http + "/v1", "TOKENWIRE_DB": ":memory:"}
    if redis is not None:
        env.update(
            TOKENWIRE_REDIS_URL=redis.url,
            TOKENWIRE_REDIS_PREFIX="bench-" + uuid.uuid4().hex[:6],
            TOKENWIRE_REDIS_FLUSH_MS=str(args.flush_ms),
        )
    gw = start(["serve", "--port", "0", "--log-level", "warning"], env=env)
    other = start(["serve", "--port", "0", "--log-level", "warning"], env=env) if args.follow and redis else None
    per_round: list[dict[str, float]] = []
    try:
        async with aiohttp.ClientSession() as session:
            model = f"gpt-4.1@tokens={args.tokens}@tps={args.tps:g}@batch={args.batch}"
            await one_stream(session, gw.ws, model, 10, None)  # warm-up
            await asyncio.sleep(0.3)
            for r in range(args.rounds):
                info0 = await redis_info(redis.port) if redis else None
                c0 = cpu_seconds(gw.pid)
                f0 = cpu_seconds(other.pid) if other else 0.0
                t0 = time.perf_counter()
                counts = await asyncio.gather(
                    *(
                        one_stream(session, gw.ws, model, args.tokens, other.ws if other else None)
                        for _ in range(args.streams)
                    )
                )
                wall = time.perf_counter() - t0
                await asyncio.sleep(0.2)  # the last flush and expiries
                cpu = cpu_seconds(gw.pid) - c0
                n = sum(counts)
                if n != args.streams * args.tokens:
                    raise RuntimeError(f"expected {args.streams * args.tokens} tokens, got {n}")
                row: dict[str, Any] = {"tokens": n, "wall": wall, "us": cpu / n * 1e6}
                if other is not None:
                    row["follower_us"] = (cpu_seconds(other.pid) - f0) / n * 1e6
                if redis is not None and info0 is not None:
                    info1 = await redis_info(redis.port)
                    delta = {
                        k: v - info0["calls"].get(k, 0)
                        for k, v in info1["calls"].items()
                        if v - info0["calls"].get(k, 0) > 0 and k != "info"
                    }
                    row["commands"] = delta
                    row["cmd_per_token"] = sum(delta.values()) / n
                    row["redis_us"] = (info1["cpu"] - info0["cpu"]) / n * 1e6
                per_round.append(row)
                line = (
                    f"  round {r + 1}/{args.rounds}: {n} tokens in {wall:.2f} s, gateway CPU {row['us']:.2f} us/token"
                )
                if "follower_us" in row:
                    line += f", following instance CPU {row['follower_us']:.2f} us/token"
                if "cmd_per_token" in row:
                    line += (
                        f", Redis {row['cmd_per_token']:.4f} commands/token "
                        f"({', '.join(f'{k} {v}' for k, v in sorted(row['commands'].items()))}), "
                        f"Redis CPU {row['redis_us']:.2f} us/token"
                    )
                print(line, flush=True)
    finally:
        if other is not None:
            other.stop()
        gw.stop()
        sim.stop()
    out: dict[str, Any] = {"us": statistics.median(r["us"] for r in per_round)}
    if redis is not None:
        out["cmd_per_token"] = statistics.median(r["cmd_per_token"] for r in per_round)
        out["redis_us"] = statistics.median(r["redis_us"] for r in per_round)
    if other is not None:
        out["follower_us"] = statistics.median(r["follower_us"] for r in per_round)
    return out


async def ship_model(port: int, ticks: int = 300) -> None:
    """The shipper alone, in this process: CPU per tick and per stream, with no other load."""
    import types

    from tokenwire.cluster.shipper import StreamShipper, _Ship
    from tokenwire.protocol.stream import Generation
    from tokenwire.store.redis import RedisLink

    print("\nshipping cost model (the shipper alone, in-process, CPU of this process):")
    link = RedisLink(f"redis://127.0.0.1:{port}/0", 2.0)
    try:
        for streams, per_tick in ((1, 1), (10, 1), (100, 1), (100, 5), (10, 50)):
            sh = StreamShipper(link, "model-" + uuid.uuid4().hex[:6], 0.01, 60)
            gens = []
            for i in range(streams):
                gen = Generation(f"m{i}")
                gen.start({"model": "x"})
                sh.ships[gen.stream_id] = _Ship(types.SimpleNamespace(gen=gen), sh.key(gen.stream_id), b"e", b"{}")
                gens.append(gen)
            await sh.flush()
            t0 = time.process_time()
            for _ in range(ticks):
                for gen in gens:
                    for _ in range(per_tick):
                        gen.token(" word")
                await sh.flush()
            dt = time.process_time() - t0
            relay = 0.0  # subtract the Generation.token calls themselves
            t1 = time.process_time()
            for gen in gens:
                for _ in range(ticks * per_tick):
                    gen.token(" word")
            relay = time.process_time() - t1
            us_tick = (dt - relay) / ticks * 1e6
            print(
                f"  {streams:4d} streams x {per_tick:3d} tokens per tick: {us_tick:8.1f} us per tick, "
                f"{us_tick / (streams * per_tick):6.2f} us per token"
            )
            await link.redis.delete(*(sh.key(g.stream_id) for g in gens))
            sh.ships.clear()
            await sh.aclose(1)
    finally:
        await link.aclose()


async def main_async(args: argparse.Namespace) -> None:
    print("without Redis (embedded default):", flush=True)
    base = await measure(args, None)
    server = RedisServer().start()
    try:
        print(f"with Redis (private redis-server on port {server.port}, flush every {args.flush_ms:g} ms):", flush=True)
        with_redis = await measure(args, server)
        if args.model:
            await ship_model(server.port)
    finally:
        server.stop()
    shape = f"{args.streams} streams x {args.tokens} tokens, tps {args.tps:g}" + (
        ", each followed from a 2nd instance" if args.follow else ""
    )
    print(f"\n{shape}, median of {args.rounds} rounds:")
    print(f"  gateway CPU per token without Redis: {base['us']:.2f} us")
    print(
        f"  gateway CPU per token with Redis:    {with_redis['us']:.2f} us "
        f"(+{with_redis['us'] - base['us']:.2f} us for Redis)"
    )
    print(f"  Redis commands per token:           {with_redis['cmd_per_token']:.4f}")
    print(f"  Redis server CPU per token:         {with_redis['redis_us']:.2f} us")
    if "follower_us" in with_redis:
        print(f"  following instance CPU per token:   {with_redis['follower_us']:.2f} us (Redis to its socket)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=20, help="concurrent WebSockets per round")
    p.add_argument("--tokens", type=int, default=2000, help="tokens per reply")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=1, help="tokens per upstream network write")
    p.add_argument("--tps", type=float, default=0, help="tokens per second per stream (0 = as fast as possible)")
    p.add_argument("--flush-ms", type=float, default=10.0, help="the gateway's redis_flush_ms")
    p.add_argument("--follow", action="store_true", help="also follow every stream from a second instance")
    p.add_argument("--model", action="store_true", help="also measure the shipper alone (CPU per tick and per stream)")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
