"""The floor under any Python relay on this machine: CPU per paced message with no HTTP,
no WebSocket, no JSON — one asyncio ``Protocol`` that copies bytes from N upstream
sockets to N downstream sockets as they arrive.

Three processes, as in ``tokenwire loadtest``: a source writing one small message per
stream every 1/RATE s (one timer for all streams), the relay, and a sink. The relay's
CPU time per message is what one event-loop wake-up, one ``recv`` and one ``send`` cost
here; compare it with the gateway's µs/token at the same number of streams
(docs/benchmarks-load.md).

    python bench/research/wakeup_floor.py --streams 20 100 250 500 1000 --rate 50 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time

from _common import cpu_seconds

MSG = b'data: {"choices":[{"delta":{"content":" token"}}]}\n\n'  # the size of an SSE chunk


async def source(port: int, streams: int, rate: float, seconds: float) -> None:
    writers = []
    for _ in range(streams):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        writers.append(w)
    step = 1 / rate / streams  # spread the streams over the period, like independent replies
    due = time.monotonic()
    end = due + seconds
    i = 0
    while due < end:
        writers[i % streams].transport.write(MSG)
        i += 1
        due += step
        delay = due - time.monotonic()
        if delay > 0.001:
            await asyncio.sleep(delay)
    for w in writers:
        w.close()


class Pipe(asyncio.Protocol):
    def __init__(self, out: asyncio.Transport) -> None:
        self.out = out
        self.n = 0

    def data_received(self, data: bytes) -> None:
        self.out.write(data)


async def relay(listen: socket.socket, sink_port: int, streams: int) -> None:
    loop = asyncio.get_running_loop()
    outs = []
    for _ in range(streams):
        t, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", sink_port)
        outs.append(t)
    it = iter(outs)
    server = await loop.create_server(lambda: Pipe(next(it)), sock=listen)
    await asyncio.sleep(3600)
    server.close()


class Count(asyncio.Protocol):
    total = 0

    def data_received(self, data: bytes) -> None:
        Count.total += len(data)


async def sink(listen: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(Count, sock=listen)
    await asyncio.sleep(3600)


def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    return s


def run(streams: int, rate: float, seconds: float, loop: str = "asyncio") -> tuple[float, int]:
    sink_sock, relay_sock = listener(), listener()
    pids = []
    for target in ("sink", "relay"):
        pid = os.fork()
        if pid == 0:
            if target == "sink":
                asyncio.run(sink(sink_sock))
            elif loop == "uvloop":
                import uvloop

                uvloop.run(relay(relay_sock, sink_sock.getsockname()[1], streams))
            else:
                asyncio.run(relay(relay_sock, sink_sock.getsockname()[1], streams))
            os._exit(0)
        pids.append(pid)
    time.sleep(0.5)
    relay_pid = pids[1]
    c0 = cpu_seconds(relay_pid)
    asyncio.run(source(relay_sock.getsockname()[1], streams, rate, seconds))
    time.sleep(0.3)
    cpu = cpu_seconds(relay_pid) - c0
    for pid in pids:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return cpu, int(streams * rate * seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, nargs="+", default=[20, 100, 250, 500, 1000])
    p.add_argument("--rate", type=float, default=50.0, help="messages per second per stream")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the relay's event loop")
    args = p.parse_args()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{stamp}, {os.uname().nodename}, {os.cpu_count()} CPUs, relay on {args.loop}")
    for n in args.streams:
        cpu, msgs = run(n, args.rate, args.seconds, args.loop)
        print(
            f"{n:>5} streams x {args.rate:g}/s: relay CPU {cpu / msgs * 1e6:6.1f} us/message "
            f"({cpu / args.seconds * 100:5.1f} % of a core)",
            flush=True,
        )
    sys.exit(0)


if __name__ == "__main__":
    main()
