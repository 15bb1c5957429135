"""``tokenwire simulate --wheel``: the lean engine of the fake upstream, for load tests.

Why not the default engine (:mod:`.server`): it paces each stream with its own 5 ms
polling sleep (to notice clients leaving quickly), i.e. 200 wake-ups per stream per
second — at 2,000 streams that alone eats a core of a 2-core machine and the
measurement would be of the simulator. Here one 1 ms timer wheel drives every
stream (a stream's phase is its start time, so tokens are spread, not burst),
the HTTP/1.1 server is a bare asyncio protocol (keep-alive, chunked), and each
token carries the ``time.monotonic()`` at which it was written, so the client
can compute the gateway's added latency per token exactly (CLOCK_MONOTONIC is
shared by all processes on a Linux host). It speaks OpenAI Chat Completions only,
without faults; ``@tokens=N`` on the model name sets the reply length.

Token contents: the first is ``"a<arrival_us>/<sent_us> "`` (request arrival and
first-token write), the others ``"t<sent_us> "``.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from .fastloop import run_fast

__all__ = ["run_wheel"]

_HEAD = b'data: {"id":"chatcmpl-load","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,'
_RESP = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Stream:
    __slots__ = ("arrival", "conn", "left", "n", "prompt_tokens", "sent")

    def __init__(self, conn: Conn, n: int, arrival: float) -> None:
        self.conn, self.n, self.left, self.arrival, self.sent = conn, n, n, arrival, 0
        self.prompt_tokens = 10


class Wheel:
    """Slots of ``tick`` seconds; a stream sits in one slot per token interval."""

    def __init__(self, tps: float, tick: float = 0.001) -> None:
        self.tick = tick
        self.nslots = max(1, round(1.0 / tps / tick)) if tps > 0 else 1
        self.slots: list[list[Stream]] = [[] for _ in range(self.nslots)]
        self.pos = 0
        self.next_due = time.monotonic()
        self.tokens = 0

    def first(self, stream: Stream) -> None:
        """Send the first token now (after TTFT), then one per turn of the wheel."""
        if stream.conn.send_token(stream):
            self.slots[self.pos].append(stream)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon(self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        while self.next_due <= now:  # catch up if the loop was late
            self.pos = (self.pos + 1) % self.nslots
            slot = self.slots[self.pos]
            if slot:
                self.slots[self.pos] = []
                keep = []
                for s in slot:
                    if s.conn.send_token(s):
                        keep.append(s)
                self.slots[self.pos].extend(keep)
            self.next_due += self.tick
        loop.call_at(self.next_due, self._run, loop)


class Conn(asyncio.Protocol):
    wheel: Wheel
    tokens: int = 100
    ttft: float = 0.1

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").lower()
            length = 0
            for line in head.split("\r\n"):
                if line.startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.request(head, body)

    def request(self, head: str, body: bytes) -> None:
        arrival = time.monotonic()
        assert self.transport is not None
        if not head.startswith("post"):
            self.transport.write(b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"data": [] }\r\n')
            return
        req = orjson.loads(body)
        n = self.tokens
        model = str(req.get("model") or "")
        if "@tokens=" in model:
            n = int(model.split("@tokens=", 1)[1].split("@", 1)[0])
        role = _HEAD + b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
        self.transport.write(_RESP + _chunk(role))
        asyncio.get_running_loop().call_later(self.ttft, self.wheel.first, Stream(self, n, arrival))

    def send_token(self, s: Stream) -> bool:
        """Write the next token; False once the stream is over."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        now_us = int(time.monotonic() * 1e6)
        content = f"a{int(s.arrival * 1e6)}/{now_us} " if s.sent == 0 else f"t{now_us} "
        s.sent += 1
        event = _HEAD + b'"delta":{"content":"%b"},"finish_reason":null}]}\n\n' % content.encode()
        if s.sent >= s.n:
            usage = b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (
                s.prompt_tokens,
                s.n,
                s.prompt_tokens + s.n,
            )
            event += _HEAD + b'"delta":{},"finish_reason":"stop"}],"usage":' + usage + b"}\n\ndata: [DONE]\n\n"
            self.transport.write(_chunk(event) + b"0\r\n\r\n")
            return False
        self.transport.write(_chunk(event))
        return True


def run_wheel(
    host: str, port: int, tps: float = 50.0, tokens: int = 100, ttft_ms: float = 100.0, reuse_port: bool = False
) -> None:
    """``reuse_port``: several of these processes can listen on one port (``SO_REUSEPORT``) when one
    process cannot offer the load (``tokenwire capacity`` on a machine with many cores)."""

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        Conn.wheel = Wheel(tps)
        Conn.tokens = tokens
        Conn.ttft = ttft_ms / 1000.0
        Conn.wheel.start(loop)
        server = await loop.create_server(Conn, host, port, backlog=4096, reuse_port=reuse_port or None)
        real_port = server.sockets[0].getsockname()[1]
        print(f"tokenwire simulate --wheel listening on http://{host}:{real_port}/v1", flush=True)
        await server.serve_forever()

    try:
        run_fast(serve())
    except KeyboardInterrupt:
        pass
