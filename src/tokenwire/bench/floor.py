"""The floor under any Python relay: CPU per paced message with no HTTP, no WebSocket, no JSON.

One event-loop ``Protocol`` copies bytes from N upstream sockets to N downstream sockets as
they arrive: nothing but one wake-up, one ``recv`` and one ``send`` per message. Whatever the
gateway does per paced token sits on top of this, so its CPU per token is quoted as a multiple
of the floor measured in the same sitting (absolute figures on a shared VM drift from run to
run; ratios taken side by side do not). Used by ``tokenwire capacity`` and by
``bench/research/wakeup_floor.py``.

Three processes, as in ``tokenwire loadtest``: a source writing one small message per stream
every 1/RATE s (one timer for all streams, spread over the period), the relay, and a sink. The
source runs in the caller's process (so the caller's CPU affinity is the source's); the relay
and the sink are forked, and each can be pinned to its own cores.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import procstat

__all__ = ["MSG", "FloorResult", "measure"]

T = TypeVar("T")

MSG = b'data: {"choices":[{"delta":{"content":" token"}}]}\n\n'  # the size of an SSE chunk


@dataclass(frozen=True)
class FloorResult:
    streams: int
    rate: float
    seconds: float
    messages: int  #: messages the source wrote in the window
    cpu_s: float  #: the relay's user + system CPU in the window
    wait_s: float  #: the relay's run-queue wait in the window (another process had its core)

    @property
    def us_per_message(self) -> float | None:
        return self.cpu_s / self.messages * 1e6 if self.messages else None

    @property
    def core_share(self) -> float:
        """The share of one core the relay used (0..1)."""
        return self.cpu_s / self.seconds if self.seconds else 0.0

    @property
    def offered_share(self) -> float:
        """Messages written / messages due (below ~0.95: the source, not the relay, was short of CPU)."""
        due = self.streams * self.rate * self.seconds
        return self.messages / due if due else 0.0


async def _source(port: int, streams: int, rate: float, seconds: float, on_start: Callable[[], None]) -> int:
    writers = []
    for _ in range(streams):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        writers.append(w)
    await asyncio.sleep(0.3)  # let the relay accept every connection before the clock starts
    on_start()
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
    return i


class _Pipe(asyncio.Protocol):
    def __init__(self, out: asyncio.Transport) -> None:
        self.out = out

    def data_received(self, data: bytes) -> None:
        self.out.write(data)


async def _relay(listen: socket.socket, sink_port: int, streams: int, ready: int) -> None:
    loop = asyncio.get_running_loop()
    outs = []
    for _ in range(streams):
        t, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", sink_port)
        outs.append(t)
    it = iter(outs)
    await loop.create_server(lambda: _Pipe(next(it)), sock=listen)
    os.write(ready, b"r")
    await asyncio.sleep(3600)


class _Count(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


async def _sink(listen: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(_Count, sock=listen)
    await asyncio.sleep(3600)


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    return s


def _run_loop(coro: Coroutine[Any, Any, T], loop: str) -> T:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def _fork(cores: Iterable[int] | None, make: Callable[[], Coroutine[Any, Any, None]], loop: str) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            if cores is not None:
                os.sched_setaffinity(0, set(cores))
            _run_loop(make(), loop)
        finally:
            os._exit(0)
    return pid


def measure(
    streams: int,
    rate: float,
    seconds: float,
    loop: str = "uvloop",
    relay_cores: Iterable[int] | None = None,
    sink_cores: Iterable[int] | None = None,
) -> FloorResult:
    """The relay's CPU per message at ``streams`` × ``rate`` messages/s for ``seconds``.

    ``loop``: the relay's and sink's event loop ("asyncio" or "uvloop"; compare with the
    gateway's). The source uses the same loop, in this process."""
    sink_sock, relay_sock = _listener(), _listener()
    sink_port = sink_sock.getsockname()[1]
    pids = [_fork(sink_cores, lambda: _sink(sink_sock), loop)]
    ready_r, ready_w = os.pipe()  # after the sink's fork: only the relay holds its write end
    pids.append(_fork(relay_cores, lambda: _relay(relay_sock, sink_port, streams, ready_w), loop))
    relay_pid = pids[1]
    try:
        os.close(ready_w)
        if os.read(ready_r, 1) != b"r":
            raise RuntimeError("the floor's relay process died during start-up")
        os.close(ready_r)
        start: list[tuple[float, float, float]] = []

        def on_start() -> None:  # the window opens after the N connections are made and accepted
            start.append((procstat.cpu_seconds(relay_pid), procstat.schedstat(relay_pid)[1], time.monotonic()))

        coro = _source(relay_sock.getsockname()[1], streams, rate, seconds, on_start)
        sent: int = _run_loop(coro, loop)
        time.sleep(0.2)  # the relay's last copies
        c0, w0, t0 = start[0]
        cpu = procstat.cpu_seconds(relay_pid) - c0
        wait = procstat.schedstat(relay_pid)[1] - w0
        elapsed = time.monotonic() - t0 - 0.2
    finally:
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        sink_sock.close()
        relay_sock.close()
    return FloorResult(streams, rate, round(elapsed, 3), sent, round(cpu, 4), round(wait, 4))
