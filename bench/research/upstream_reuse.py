"""What a pooled upstream connection saves: time to the first token over a fresh vs a reused connection.

Runs ``tokenwire simulate`` (no TTFT, so what is timed is the gateway's side of the call) over
plain HTTP and over TLS (a self-signed certificate made with ``openssl req``), and times
``provider.start(call)`` plus the reads up to the first token, N times each way, in this process
with the gateway's own client (``upstream/wire.py``). "Fresh" keeps no idle connection
(``Pool.max_idle = 0``): every call pays the TCP (and TLS) handshake, as without reuse.

    python bench/research/upstream_reuse.py --calls 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import SRC, simulate

from tokenwire.protocol import events as ev
from tokenwire.upstream.base import ChatCall
from tokenwire.upstream.http import SharedSession
from tokenwire.upstream.openai import OpenAIProvider


def cert(folder: Path) -> tuple[str, str]:
    c, k = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(k), "-out", str(c)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return str(c), str(k)


async def first_token_ms(base_url: str, calls: int, reuse: bool) -> list[float]:
    session = SharedSession()
    if not reuse:
        session.pool.max_idle = 0
    provider = OpenAIProvider("sim", base_url + "/v1", "sk-bench", session)
    call = ChatCall("gpt-4.1@tps=0@tokens=3", [{"role": "user", "content": "x"}])
    out = []
    try:
        for i in range(calls + 5):
            t0 = time.perf_counter()
            stream = await provider.start(call)
            while not any(k == ev.TOKEN for k, _ in (await stream.read() or [(ev.TOKEN, None)])):
                pass
            t1 = time.perf_counter()
            while await stream.read() is not None:
                pass
            if i >= 5:  # warm-up
                out.append((t1 - t0) * 1000)
        assert session.pool.connects == (1 if reuse else calls + 5), session.pool.connects
    finally:
        await session.aclose()
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        c, k = cert(Path(tmp))
        os.environ["SSL_CERT_FILE"] = c
        plain = simulate()
        tls = simulate("--tls-cert", c, "--tls-key", k)
        try:
            print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.calls} calls each, gateway {SRC}")
            for name, proc in (("http", plain), ("https", tls)):
                for reuse in (False, True, False, True):
                    ms = await first_token_ms(proc.http, args.calls, reuse)
                    print(
                        f"  {name:5} {'reused' if reuse else 'fresh ':6}: p50 {statistics.median(ms):6.2f} ms"
                        f"  p90 {pct(ms, 90):6.2f}  p99 {pct(ms, 99):6.2f}"
                    )
        finally:
            plain.stop()
            tls.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=200)
    asyncio.run(main(p.parse_args()))
