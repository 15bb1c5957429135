"""Gateway CPU per relayed token: tokenwire against the LiteLLM proxy, in one sitting.

Both gateways relay the same ``tokenwire simulate`` upstream (OpenAI's wire format, one token
per SSE chunk) to the same clients: N concurrent streamed Chat Completions (``POST
/v1/chat/completions``, ``"stream": true``), the one dialect both serve. Rounds alternate
between the two gateways, so machine drift hits them alike. Each figure is one gateway's
user+sys CPU (its process and every descendant, from /proc) over the tokens the clients
counted; a round that loses a token fails the run. The clients are aiohttp in this process
(their CPU is not counted).

LiteLLM is not a dependency of tokenwire: install it in a virtual environment of its own and
pass its ``litellm`` executable (docs/benchmarks.md, "Against LiteLLM", gives the versions)::

    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install 'litellm[proxy]'
    python bench/research/compare_litellm.py --litellm /tmp/llvenv/bin/litellm --streams 20 --tokens 500
    python bench/research/compare_litellm.py --litellm ... --tps 50       # paced upstream

Each gateway runs as its users get it by default (LiteLLM: ``litellm --config``, one uvicorn
worker, a master key, the local model-cost map so it does not go to the internet; tokenwire:
``tokenwire serve``), with its per-request log lines on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import cpu_seconds, gateway_tree, simulate, start

VERSION = "from importlib.metadata import version; print(version('litellm'))"  #: without importing litellm
MASTER_KEY = "sk-bench-" + "0123456789abcdef" * 3  #: LiteLLM refuses to start without a strong one


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants (LiteLLM may fork workers).

    From ``/proc/PID/stat``, which keeps the time of threads that have exited (LiteLLM's come
    and go: summing the live threads' ``schedstat`` missed ~20 % of its CPU). Its unit is a
    10 ms tick, so tokenwire's rounds repeat their streams (``--repeat``) to use ~1 s of CPU.
    """
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiteLLM:
    """``litellm --config`` on a free port, one model alias in front of the simulator."""

    def __init__(self, exe: str, upstream: str, model: str) -> None:
        self.exe = exe
        self.dir = Path(tempfile.mkdtemp(prefix="litellm-bench-"))
        config = self.dir / "config.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: bench\n"
            "    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: {upstream}/v1\n"
            "      api_key: sk-bench\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
        )
        self.port = free_port()
        env = dict(os.environ, LITELLM_MASTER_KEY=MASTER_KEY, LITELLM_LOCAL_MODEL_COST_MAP="True")
        env.pop("PYTHONPATH", None)
        self.log = open(self.dir / "litellm.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port), "--num_workers", "1"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.dir,
        )
        self.http = f"http://127.0.0.1:{self.port}"

    async def ready(self, session: aiohttp.ClientSession, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm exited: {(self.dir / 'litellm.log').read_text()[-2000:]}")
            try:
                async with session.get(self.http + "/health/liveliness") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
        raise RuntimeError(f"litellm did not answer within {timeout:g} s")

    def version(self) -> str:
        out = subprocess.run(
            [str(Path(self.exe).parent / "python"), "-c", VERSION],
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() or "?"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def stream(session: aiohttp.ClientSession, base: str, model: str, key: str) -> int:
    """One streamed Chat Completion; the number of content deltas it carried."""
    body = {"model": model, "messages": [{"role": "user", "content": "bench"}], "stream": True}
    n = 0
    async with session.post(base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status != 200:
            raise RuntimeError(f"{base}: HTTP {r.status} {(await r.text())[:300]}")
        async for line in r.content:
            if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                n += 1
    return n


async def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], str]:
    pace = ["--tps", str(args.tps), "--ttft-ms", "0"] if args.tps else ["--fast"]
    sim = simulate(*pace)
    model = f"gpt-4.1@tokens={args.tokens}@tps={args.tps:g}@batch=1"
    tw = start(
        ["serve", "--port", "0", "--log-level", "info"],
        env={"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": sim.http + "/v1", "TOKENWIRE_DB": ":memory:"},
    )
    ll = LiteLLM(args.litellm, sim.http, model)
    gateways = {
        "tokenwire": (tw.pid, tw.http, model, "none", args.repeat),
        "litellm": (ll.proc.pid, ll.http, "bench", MASTER_KEY, 1),
    }
    results: dict[str, list[float]] = {name: [] for name in gateways}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            await ll.ready(session)
            version = ll.version()
            for name, (_, base, m, key, _) in gateways.items():  # warm-up, and a check that each relays it all
                got = await asyncio.gather(*(stream(session, base, m, key) for _ in range(args.streams)))
                if sum(got) != args.streams * args.tokens:
                    raise RuntimeError(f"{name}: warm-up counted {sum(got)} of {args.streams * args.tokens} tokens")
            for r in range(args.rounds):
                order = list(gateways.items())
                if r % 2:
                    order.reverse()
                for name, (pid, base, m, key, repeat) in order:
                    c0 = tree_cpu(pid)
                    t0 = time.perf_counter()
                    n = 0
                    for _ in range(repeat):
                        counts = await asyncio.gather(*(stream(session, base, m, key) for _ in range(args.streams)))
                        n += sum(counts)
                    wall = time.perf_counter() - t0
                    cpu = tree_cpu(pid) - c0
                    if n != repeat * args.streams * args.tokens:
                        raise RuntimeError(f"{name}: expected {repeat * args.streams * args.tokens} tokens, got {n}")
                    us = cpu / n * 1e6
                    results[name].append(us)
                    print(
                        f"round {r + 1}/{args.rounds}: {name:<10} {us:8.2f} us/token "
                        f"({n} tokens, {cpu:.2f} s CPU, {wall:.2f} s wall, {n / wall:,.0f} tokens/s)",
                        flush=True,
                    )
    finally:
        ll.stop()
        tw.stop()
        sim.stop()
    return results, version


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--litellm", required=True, help="the litellm executable (in its own venv)")
    p.add_argument("--streams", type=int, default=20, help="concurrent streams per round")
    p.add_argument("--tokens", type=int, default=500, help="tokens per reply")
    p.add_argument("--tps", type=float, default=0.0, help="tokens/s per stream (0: unpaced)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per gateway, alternated")
    p.add_argument(
        "--repeat", type=int, default=5, help="tokenwire's round runs its streams this many times (CPU ticks are 10 ms)"
    )
    args = p.parse_args()
    print(f"tokenwire under test: {gateway_tree()}", flush=True)
    results, version = asyncio.run(measure(args))
    tw, ll = statistics.median(results["tokenwire"]), statistics.median(results["litellm"])
    pairs = sorted(b / a for a, b in zip(results["tokenwire"], results["litellm"], strict=True))
    pacing = f"{args.tps:g} tok/s" if args.tps else "unpaced"
    print(
        f"\ngateway CPU per relayed token, median of {args.rounds} alternated rounds "
        f"({args.streams} streams x {args.tokens} tokens, {pacing}):\n"
        f"  tokenwire          {tw:8.2f} us/token\n"
        f"  litellm {version:<10} {ll:8.2f} us/token\n"
        f"  ratio              {ll / tw:8.1f}x  (round by round: {', '.join(f'{x:.1f}' for x in pairs)})"
    )


if __name__ == "__main__":
    main()
