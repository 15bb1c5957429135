"""Gateway CPU time per relayed token, against ``tokenwire simulate --fast``.

Starts a fake upstream and a gateway as separate processes on ephemeral ports,
opens N WebSockets that each stream replies of T tokens (one token per upstream
SSE chunk), and divides the gateway process's CPU time (user + sys, from
/proc/PID/stat) over the measured rounds by the tokens relayed.

    python bench/research/relay_cpu.py --streams 20 --tokens 2000 --rounds 5
    python bench/research/relay_cpu.py --otel ...   # the same with OpenTelemetry export on
    python bench/research/relay_cpu.py --provider anthropic ...   # an Anthropic (or gemini) upstream

``--otel`` points the gateway's OTEL_EXPORTER_OTLP_ENDPOINT at a sink in this process (it
answers every OTLP/HTTP POST with 200 and counts the bytes), with a 0.5 s span batch delay
and a 1 s metric interval, so the exporters' own threads run inside the measured rounds and
their CPU is counted with the gateway's (/proc/PID/stat covers every thread).

``--callgrind`` runs the gateway under ``valgrind --tool=callgrind`` and reports machine
instructions per relayed token instead of CPU time: a count that does not move with the load
other processes put on the machine (the same binary, inputs and environment give the same total
within a fraction of a per cent), so an A/B on a busy shared VM still means something. Only the
measured rounds are counted (instrumentation is switched on after start-up and the warm-up,
and the counters are zeroed and dumped around each round with ``callgrind_control``).

The gateway is whichever tree ``PYTHONPATH`` points at; the fake upstream, the process
starter and the /proc reader always come from this script's own tree (see _common.py), so
the same script A/Bs two trees (bench/research/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from _common import cpu_seconds, gateway_tree, simulate, start
from aiohttp import web


async def otlp_sink() -> tuple[web.AppRunner, str, dict[str, int]]:
    """An OTLP/HTTP endpoint that accepts everything: where ``--otel`` exports go."""
    seen = {"posts": 0, "bytes": 0}

    async def accept(request: web.Request) -> web.Response:
        seen["posts"] += 1
        seen["bytes"] += len(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", accept)
    app.router.add_post("/v1/metrics", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}", seen


#: the model a stream asks for, per ``--provider`` (each simulated in that provider's wire format)
PROVIDER_MODELS = {"openai": "gpt-4.1", "anthropic": "claude-sonnet-4.5", "gemini": "gemini-2.5-flash"}


async def one_stream(
    session: aiohttp.ClientSession, url: str, model: str, tokens: int, replies: int = 1, messages: bool = False
) -> int:
    """One WebSocket, ``replies`` generations on it one after the other; the tokens counted.

    ``messages``: each chat carries its history (``messages``, as ``tokenwire loadtest`` and the
    SDK dialects send), so nothing is stored; else the seed's ``content``, which the gateway keeps
    as a server-side conversation."""
    body: dict[str, object] = {"type": "chat", "id": "b", "model": model, "params": {"max_tokens": tokens}}
    if messages:
        body["messages"] = [{"role": "user", "content": "bench"}]
    else:
        body["content"] = "bench"
    frame = orjson.dumps(body).decode()
    n = 0
    async with session.ws_connect(url) as ws:
        for _ in range(replies):
            await ws.send_str(frame)
            async for msg in ws:
                event = orjson.loads(msg.data)
                kind = event.get("type")
                if kind == "token":
                    n += 1
                elif kind == "end":
                    if event["status"] != "completed":
                        raise RuntimeError(f"generation ended {event}")
                    break
                elif kind == "error":
                    raise RuntimeError(f"error: {event}")
            else:
                raise RuntimeError("socket closed early")
    return n


class Callgrind:
    """Instruction counts of a process started under ``valgrind --tool=callgrind --instr-atstart=no``."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="relay-cg-"))
        self.prefix = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.dir}/cg.out.%p",
        ]

    def _control(self, pid: int, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)

    def start(self, pid: int) -> None:
        self._control(pid, "--instr=on")

    def zero(self, pid: int) -> None:
        self._control(pid, "--zero")

    def dump(self, pid: int) -> int:
        """Dump the counters since the last zero; return their instruction total."""
        before = set(self.dir.iterdir())
        self._control(pid, "--dump")
        (new,) = set(self.dir.iterdir()) - before
        m = re.search(rb"^(?:summary|totals): (\d+)", new.read_bytes(), re.M)
        if m is None:
            raise RuntimeError(f"no instruction total in {new}")
        return int(m.group(1))


async def measure(args: argparse.Namespace) -> list[float]:
    # --tps: a paced upstream (one token per chunk every 1/tps s, no TTFT), the wake-up-bound case
    pace = ["--tps", str(args.tps), "--ttft-ms", "0"] if args.tps else ["--fast", "--batch", str(args.batch)]
    sim = simulate(*pace)
    cg = Callgrind() if args.callgrind else None
    env = {
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": sim.http + "/v1",
        "TOKENWIRE_DB": ":memory:",
        "TOKENWIRE_EVENT_LOOP": args.loop,
    }
    sink = None
    if args.otel:
        sink, url, seen = await otlp_sink()
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = url
        env |= {"OTEL_BSP_SCHEDULE_DELAY": "500", "OTEL_METRIC_EXPORT_INTERVAL": "1000"}
    serve = ["serve", "--port", "0", "--log-level", "warning"]
    if args.provider != "openai":  # that provider kind, in front of the same simulator (its own wire format)
        config = Path(tempfile.mkdtemp(prefix="relay-cpu-")) / "tokenwire.toml"
        base = sim.http + ("/v1beta" if args.provider == "gemini" else "/v1")
        config.write_text(
            f'[providers.bench]\nkind = "{args.provider}"\nbase_url = "{base}"\n'
            f'api_key = "sk-bench"\nmodels = ["{PROVIDER_MODELS[args.provider].split("-")[0]}-*"]\n'
        )
        serve += ["--config", str(config)]
    gw = start(
        serve,
        env=env,
        prefix=cg.prefix if cg else (),
        timeout=300 if cg else 20,
    )
    results: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            model = f"{PROVIDER_MODELS[args.provider]}@tokens={args.tokens}@tps={args.tps:g}@batch={args.batch}"
            await one_stream(session, gw.ws, model, 10)  # warm-up
            if cg:
                cg.start(gw.pid)
                await one_stream(session, gw.ws, model, 10)  # warm-up under instrumentation
            for r in range(args.rounds):
                if cg:
                    cg.zero(gw.pid)
                c0 = cpu_seconds(gw.pid)
                t0 = time.perf_counter()
                counts = await asyncio.gather(
                    *(
                        one_stream(session, gw.ws, model, args.tokens, args.replies, args.messages)
                        for _ in range(args.streams)
                    )
                )
                wall = time.perf_counter() - t0
                cpu = cpu_seconds(gw.pid) - c0
                n = sum(counts)
                if n != args.streams * args.replies * args.tokens:
                    raise RuntimeError(f"expected {args.streams * args.replies * args.tokens} tokens, got {n}")
                if cg:
                    per = cg.dump(gw.pid) / n
                    results.append(per)
                    print(
                        f"round {r + 1}/{args.rounds}: {n} tokens in {wall:.2f} s wall under callgrind "
                        f"-> {per:,.0f} instructions/token",
                        flush=True,
                    )
                    continue
                us = cpu / n * 1e6
                results.append(us)
                print(
                    f"round {r + 1}/{args.rounds}: {n} tokens in {wall:.2f} s wall, "
                    f"gateway CPU {cpu:.2f} s -> {us:.2f} us/token ({n / wall:,.0f} tokens/s)",
                    flush=True,
                )
        if sink is not None:
            print(f"OTLP sink: {seen['posts']} exports, {seen['bytes']:,} bytes", flush=True)
            if not seen["posts"]:
                raise RuntimeError("--otel: the gateway exported nothing")
    finally:
        # its last export goes to the sink, served by this loop; under valgrind it stops slowly
        await asyncio.to_thread(gw.stop, timeout=60)
        sim.stop()
        if sink is not None:
            await sink.cleanup()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=20, help="concurrent WebSockets per round")
    p.add_argument("--tokens", type=int, default=2000, help="tokens per reply")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--replies", type=int, default=1, help="generations per WebSocket, one after the other")
    p.add_argument(
        "--messages", action="store_true", help="chats carry messages (nothing stored), as loadtest's do, not content"
    )
    p.add_argument("--batch", type=int, default=1, help="tokens per upstream network write (1 = one per chunk)")
    p.add_argument("--tps", type=float, default=0.0, help="pace each stream at this many tokens/s (0: unpaced)")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="the gateway's event loop")
    p.add_argument(
        "--callgrind", action="store_true", help="count instructions per token under valgrind (load-independent)"
    )
    p.add_argument("--otel", action="store_true", help="OpenTelemetry export on, to a local OTLP/HTTP sink")
    p.add_argument(
        "--provider",
        choices=sorted(PROVIDER_MODELS),
        default="openai",
        help="the upstream's kind (and wire format): the gateway's provider for it, before the same simulator",
    )
    args = p.parse_args()
    print(f"gateway under test: {gateway_tree()}", flush=True)
    results = asyncio.run(measure(args))
    if args.callgrind:
        print(
            f"\ngateway instructions per relayed token: median {statistics.median(results):,.0f}, "
            f"min {min(results):,.0f} over {len(results)} rounds "
            f"({args.streams} streams x {args.replies} x {args.tokens} tokens, batch {args.batch}, "
            f"event loop {args.loop}, {args.provider} upstream{', messages' if args.messages else ''})"
        )
        return
    print(
        f"\ngateway CPU per relayed token: median {statistics.median(results):.2f} us, "
        f"min {min(results):.2f} us over {len(results)} rounds "
        f"({args.streams} streams x {args.tokens} tokens, batch {args.batch}, event loop {args.loop}, "
        f"OTel {'on' if args.otel else 'off'}, {args.provider} upstream)"
    )


if __name__ == "__main__":
    main()
