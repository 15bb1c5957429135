#!/usr/bin/env python3
"""Measure relay CPU cost per streamed token for candidate tokenwire stacks.

Setup (all on 127.0.0.1, ephemeral ports, every process started and killed here):

  fake upstream (`tokenwire simulate`)  --SSE-->  relay (MEASURED)  --WS-->  load client (separate process)

The relay accepts a WebSocket; on a text frame {"type":"chat","id":...,"max_tokens":N}
it POSTs to the upstream /v1/chat/completions, splits the SSE body into lines on
bytes itself, json-decodes each ``data:`` payload, takes choices[0].delta.content
and sends one text frame {"type":"token","id":..,"seq":n,"content":..} per token,
then {"type":"end","id":..,"seq":<count>,"finish_reason":..}.

Metric: (user+sys CPU seconds of the relay process during the load) / tokens the
load client received and verified  =>  microseconds per token.

Variants (permessage-deflate disabled everywhere):
  a  aiohttp server + aiohttp client + orjson
  b  aiohttp server + aiohttp client + json (stdlib)
  c  aiohttp server + aiohttp client + msgspec (typed Struct decoder)
  d  Starlette on uvicorn (websockets-sansio) + httpx AsyncClient + orjson
  e  raw ASGI on uvicorn (websockets-sansio) + aiohttp client + orjson
  f  picows server + aiohttp client + orjson
  g  Starlette on uvicorn (websockets-sansio) + aiohttp client + orjson
     (attribution only: d minus g = httpx cost, g minus e = Starlette cost)

The fake upstream is ``tokenwire simulate --fast --text "tok " [--batch N] [--pace-ms MS]``
from this tree (started with PYTHONPATH=<tree>/src, see _common.py); the relays and the load
client import only third-party libraries.

Usage:
  python bench/research/compare_stacks.py                 # full run (5 reps x all variants + JSON micro-bench)
  python bench/research/compare_stacks.py --variants a,f --reps 3
  python bench/research/compare_stacks.py --json-only     # JSON micro-benchmark only

Needs (third-party only): aiohttp orjson msgspec uvicorn websockets starlette httpx picows
(optional: uvloop for --loop uvloop). A variant whose libraries are missing is
reported as failed; the others still run.
"""

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

from _common import cpu_seconds, simulate

VARIANTS = {
    "a": "aiohttp server + aiohttp client + orjson",
    "b": "aiohttp server + aiohttp client + json (stdlib)",
    "c": "aiohttp server + aiohttp client + msgspec",
    "d": "Starlette/uvicorn (websockets-sansio) + httpx + orjson",
    "e": "raw ASGI/uvicorn (websockets-sansio) + aiohttp client + orjson",
    "f": "picows server + aiohttp client + orjson",
    "g": "Starlette/uvicorn (websockets-sansio) + aiohttp client + orjson",
}
VARIANT_JSON = {"a": "orjson", "b": "json", "c": "msgspec", "d": "orjson", "e": "orjson", "f": "orjson", "g": "orjson"}

MAX_SSE_LINE = 1 << 20  # a single SSE line longer than this is an upstream error


def listen_socket() -> socket.socket:
    """A listening TCP socket on 127.0.0.1 with an ephemeral port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    s.setblocking(False)
    return s


def ready(port: int) -> None:
    print(f"READY {port}", flush=True)


def set_loop_policy(name: str) -> None:
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# --------------------------------------------------------------------------- #
# Relay building blocks shared by all variants
# --------------------------------------------------------------------------- #
class UpstreamError(Exception):
    pass


class SSESplitter:
    """Incremental splitter of an SSE byte stream into ``data:`` payloads.

    Works on raw bytes, no line-length limit other than MAX_SSE_LINE. Handles
    LF and CRLF line ends and lines split across reads. (Multi-line ``data:``
    events are not joined: OpenAI-style streams use one line per event.)
    """

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, chunk: bytes) -> list:
        buf = self.buf + chunk if self.buf else chunk
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        if len(self.buf) > MAX_SSE_LINE:
            raise UpstreamError("SSE line too long")
        out = []
        for line in lines:
            if line[:5] == b"data:":
                d = line[6:] if line[5:6] == b" " else line[5:]
                if d[-1:] == b"\r":
                    d = d[:-1]
                out.append(d)
        return out


class Codec:
    """JSON library adapter: request parsing, chunk extraction, frame encoding."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "orjson":
            import orjson

            loads = orjson.loads
            self.loads = loads
            self.dumps = orjson.dumps  # -> bytes
            self.bytes_out = True

            def extract(b):
                ch = loads(b).get("choices")
                if not ch:
                    return None, None
                c = ch[0]
                return (c.get("delta") or {}).get("content"), c.get("finish_reason")
        elif name == "json":
            loads = json.loads
            self.loads = loads
            enc = json.JSONEncoder(separators=(",", ":")).encode
            self.dumps = enc  # -> str
            self.bytes_out = False

            def extract(b):
                ch = loads(b).get("choices")
                if not ch:
                    return None, None
                c = ch[0]
                return (c.get("delta") or {}).get("content"), c.get("finish_reason")
        elif name == "msgspec":
            import msgspec

            Chunk = msgspec_chunk_type()
            dec = msgspec.json.Decoder(Chunk).decode
            self.loads = msgspec.json.Decoder().decode
            self.dumps = msgspec.json.Encoder().encode  # -> bytes
            self.bytes_out = True

            def extract(b):
                ch = dec(b).choices
                if not ch:
                    return None, None
                c = ch[0]
                return c.delta.content, c.finish_reason
        else:
            raise ValueError(name)
        self.extract = extract


def msgspec_chunk_type():
    import msgspec

    class Delta(msgspec.Struct):
        content: str | None = None

    class Choice(msgspec.Struct):
        delta: Delta | None = None
        finish_reason: str | None = None

    class Chunk(msgspec.Struct):
        choices: list[Choice] = []

    return Chunk


def upstream_body(codec: Codec, req: dict):
    return codec.dumps(
        {
            "model": req.get("model", "m"),
            "stream": True,
            "max_tokens": int(req.get("max_tokens", 2000)),
            "messages": req.get("messages") or [{"role": "user", "content": "hi"}],
        }
    )


async def relay_chat(req: dict, open_upstream, send, codec: Codec) -> None:
    """Core relay loop, identical for every variant.

    open_upstream(body) -> async iterator of raw body byte chunks.
    send(frame) sends one text frame (bytes or str per codec) and returns an
    awaitable or None (None = already sent, no backpressure to wait on).
    """
    cid = req.get("id", "c1")
    extract, dumps = codec.extract, codec.dumps
    sse = SSESplitter()
    seq = 0
    finish = None
    done = False
    try:
        async for chunk in open_upstream(upstream_body(codec, req)):
            if done:
                continue
            for data in sse.feed(chunk):
                if data == b"[DONE]":
                    done = True
                    break
                content, fr = extract(data)
                if fr is not None:
                    finish = fr
                if content:
                    w = send(dumps({"type": "token", "id": cid, "seq": seq, "content": content}))
                    if w is not None:
                        await w
                    seq += 1
    except UpstreamError as e:
        w = send(dumps({"type": "error", "id": cid, "message": str(e)}))
        if w is not None:
            await w
        return
    w = send(dumps({"type": "end", "id": cid, "seq": seq, "finish_reason": finish}))
    if w is not None:
        await w


def aiohttp_upstream(url: str):
    """Return (open_upstream, close) using one shared aiohttp ClientSession."""
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
    )
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}

    async def open_upstream(body):
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                raise UpstreamError(f"upstream HTTP {resp.status}")
            async for chunk in resp.content.iter_any():  # raw reads, we split lines ourselves
                yield chunk

    return open_upstream, session.close


def httpx_upstream(url: str):
    import httpx

    client = httpx.AsyncClient(
        timeout=httpx.Timeout(None, connect=10),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=1000),
    )
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}

    async def open_upstream(body):
        async with client.stream("POST", url, content=body, headers=headers) as resp:
            if resp.status_code != 200:
                raise UpstreamError(f"upstream HTTP {resp.status_code}")
            async for chunk in resp.aiter_raw():
                yield chunk

    return open_upstream, client.aclose


# --------------------------------------------------------------------------- #
# Relay variants
# --------------------------------------------------------------------------- #
def relay_aiohttp(codec: Codec, url: str) -> None:
    """a/b/c: aiohttp web server + aiohttp client."""
    from aiohttp import WSMsgType, web

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        open_up = request.app["open_upstream"]
        if codec.bytes_out:

            def send(b):
                return ws.send_frame(b, WSMsgType.TEXT)  # text frame from bytes, no decode/encode
        else:
            send = ws.send_str
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                req = codec.loads(msg.data)
                if req.get("type") == "chat":
                    await relay_chat(req, open_up, send, codec)
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/ws", ws_handler)
        open_up, close = aiohttp_upstream(url)
        app["open_upstream"] = open_up
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = listen_socket()
        await web.SockSite(runner, sock).start()
        ready(sock.getsockname()[1])
        try:
            await asyncio.Event().wait()
        finally:
            await close()

    asyncio.run(main())


def _run_uvicorn(app, loop_name: str) -> None:
    import uvicorn
    from uvicorn.config import WS_PROTOCOLS

    ws_impl = "websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets"
    config = uvicorn.Config(
        app,
        ws=ws_impl,
        ws_per_message_deflate=False,
        lifespan="on",
        log_level="warning",
        access_log=False,
        http="h11",
        loop="uvloop" if loop_name == "uvloop" else "asyncio",
    )
    server = uvicorn.Server(config)
    sock = listen_socket()
    port = sock.getsockname()[1]
    print(f"# uvicorn ws={ws_impl}", file=sys.stderr, flush=True)

    async def serve():
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not task.done():  # noqa: ASYNC110 -- uvicorn exposes no start event
            await asyncio.sleep(0.01)
        ready(port)
        await task

    asyncio.run(serve())


def relay_starlette(codec: Codec, url: str, client: str = "httpx") -> None:
    """d: Starlette on uvicorn + httpx (g: same with the aiohttp client)."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    state = {}

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        open_up = state["open_upstream"]
        if codec.bytes_out:

            def send(b):
                return ws.send_text(b.decode())
        else:
            send = ws.send_text
        try:
            while True:
                req = codec.loads(await ws.receive_text())
                if req.get("type") == "chat":
                    await relay_chat(req, open_up, send, codec)
        except WebSocketDisconnect:
            pass

    @asynccontextmanager
    async def lifespan(app):
        make = httpx_upstream if client == "httpx" else aiohttp_upstream
        state["open_upstream"], close = make(url)
        yield
        await close()

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)], lifespan=lifespan)
    _run_uvicorn(app, ARGS.loop)


def relay_asgi(codec: Codec, url: str) -> None:
    """e: raw ASGI app on uvicorn + aiohttp client."""
    state = {}

    async def app(scope, receive, send_asgi):
        t = scope["type"]
        if t == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup":
                    state["open_upstream"], state["close"] = aiohttp_upstream(url)
                    await send_asgi({"type": "lifespan.startup.complete"})
                elif m["type"] == "lifespan.shutdown":
                    await state["close"]()
                    await send_asgi({"type": "lifespan.shutdown.complete"})
                    return
        if t == "http":
            await send_asgi({"type": "http.response.start", "status": 404, "headers": []})
            await send_asgi({"type": "http.response.body", "body": b""})
            return
        m = await receive()  # websocket.connect
        if m["type"] != "websocket.connect":
            return
        await send_asgi({"type": "websocket.accept"})
        open_up = state["open_upstream"]
        if codec.bytes_out:

            def send(b):
                return send_asgi({"type": "websocket.send", "text": b.decode()})
        else:

            def send(s):
                return send_asgi({"type": "websocket.send", "text": s})

        while True:
            m = await receive()
            if m["type"] == "websocket.disconnect":
                return
            if m["type"] == "websocket.receive":
                data = m.get("text")
                if data is None:
                    data = m.get("bytes")
                req = codec.loads(data)
                if req.get("type") == "chat":
                    await relay_chat(req, open_up, send, codec)

    _run_uvicorn(app, ARGS.loop)


def relay_picows(codec: Codec, url: str) -> None:
    """f: picows server + aiohttp client."""
    from picows import WSListener, WSMsgType, ws_create_server

    TEXT = WSMsgType.TEXT

    class Listener(WSListener):
        def __init__(self, open_up) -> None:
            self.open_up = open_up
            self.transport = None
            self.writable = asyncio.Event()
            self.writable.set()
            self.queue: asyncio.Queue = asyncio.Queue()
            self.worker = None

        def on_ws_connected(self, transport) -> None:
            self.transport = transport
            self.worker = asyncio.get_running_loop().create_task(self.run())

        def on_ws_frame(self, transport, frame) -> None:
            mt = frame.msg_type
            if mt == TEXT:
                if not frame.fin:  # fragmented requests are not used by clients here
                    transport.send_close()
                    transport.disconnect()
                    return
                self.queue.put_nowait(frame.get_payload_as_bytes())
            elif mt == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()

        def on_ws_disconnected(self, transport) -> None:
            if self.worker is not None:
                self.worker.cancel()

        def pause_writing(self) -> None:
            self.writable.clear()

        def resume_writing(self) -> None:
            self.writable.set()

        async def run(self) -> None:
            t = self.transport
            writable = self.writable
            if codec.bytes_out:

                def send(b):
                    t.send(TEXT, b)
                    return None if writable.is_set() else writable.wait()
            else:

                def send(s):
                    t.send(TEXT, s.encode())
                    return None if writable.is_set() else writable.wait()

            while True:
                req = codec.loads(await self.queue.get())
                if req.get("type") == "chat":
                    await relay_chat(req, self.open_up, send, codec)

    async def main() -> None:
        open_up, close = aiohttp_upstream(url)
        sock = listen_socket()
        server = await ws_create_server(lambda request: Listener(open_up), sock=sock, websocket_handshake_timeout=10)
        ready(sock.getsockname()[1])
        try:
            async with server:
                await server.serve_forever()
        finally:
            await close()

    asyncio.run(main())


RELAYS = {
    "a": relay_aiohttp,
    "b": relay_aiohttp,
    "c": relay_aiohttp,
    "d": relay_starlette,
    "e": relay_asgi,
    "f": relay_picows,
    "g": lambda codec, url: relay_starlette(codec, url, client="aiohttp"),
}
ARGS = None


def cmd_relay(args) -> None:
    global ARGS
    ARGS = args
    set_loop_policy(args.loop)
    codec = Codec(VARIANT_JSON[args.variant])
    RELAYS[args.variant](codec, args.upstream)


# --------------------------------------------------------------------------- #
# Load client (aiohttp WS client) -- separate process, verifies every frame
# --------------------------------------------------------------------------- #
def cmd_load(args) -> None:
    import aiohttp
    import orjson

    async def one(session, i: int) -> int:
        got = 0
        async with session.ws_connect(args.url, compress=0, max_msg_size=0, autoping=True) as ws:
            for r in range(args.rounds):
                cid = f"c{i}-{r}"
                await ws.send_str(
                    json.dumps(
                        {
                            "type": "chat",
                            "id": cid,
                            "model": "m",
                            "max_tokens": args.tokens,
                            "messages": [{"role": "user", "content": "hi"}],
                        }
                    )
                )
                exp = 0
                while True:
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise RuntimeError(f"unexpected frame {msg.type} {msg.data!r}")
                    d = orjson.loads(msg.data)
                    typ = d["type"]
                    if typ == "token":
                        if d["seq"] != exp or d["content"] != "tok " or d["id"] != cid:
                            raise RuntimeError(f"bad token frame {d} (expected seq {exp})")
                        exp += 1
                    elif typ == "end":
                        if d["seq"] != exp or d["finish_reason"] != "stop":
                            raise RuntimeError(f"bad end frame {d} after {exp} tokens")
                        break
                    else:
                        raise RuntimeError(f"error frame {d}")
                if exp != args.tokens:
                    raise RuntimeError(f"{cid}: got {exp} tokens, expected {args.tokens}")
                got += exp
        return got

    async def main() -> dict:
        t0 = time.perf_counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s:
            res = await asyncio.gather(*(one(s, i) for i in range(args.conns)), return_exceptions=True)
        wall = time.perf_counter() - t0
        errors = [repr(r) for r in res if isinstance(r, BaseException)]
        return {
            "tokens": sum(r for r in res if isinstance(r, int)),
            "errors": errors[:3],
            "n_errors": len(errors),
            "wall": wall,
        }

    print(json.dumps(asyncio.run(main())), flush=True)


# --------------------------------------------------------------------------- #
# JSON micro-benchmark
# --------------------------------------------------------------------------- #
TYPICAL_CHUNK = (
    b'{"id":"chatcmpl-AbC123xyz456DEF789ghi012JKLmn","object":"chat.completion.chunk",'
    b'"created":1763683200,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1",'
    b'"choices":[{"index":0,"delta":{"content":" token"},"logprobs":null,"finish_reason":null}]}'
)


def json_bench(quiet: bool = False) -> list:
    import timeit

    rows = []
    frame = {"type": "token", "id": "c1", "seq": 1234, "content": " token"}
    s = " token"
    setups = {}
    try:
        import orjson

        setups["orjson"] = orjson
    except ImportError:
        pass
    try:
        import msgspec

        setups["msgspec"] = msgspec
    except ImportError:
        pass

    cases = [("loads 250 B chunk", "json", lambda: json.loads(TYPICAL_CHUNK))]
    jenc = json.JSONEncoder(separators=(",", ":")).encode
    cases += [
        ("dumps token dict", "json", lambda: json.dumps(frame)),
        ("dumps token dict", "json (compact encoder)", lambda: jenc(frame)),
        ("dumps str", "json", lambda: json.dumps(s)),
    ]
    if "orjson" in setups:
        o = setups["orjson"]
        cases += [
            ("loads 250 B chunk", "orjson", lambda: o.loads(TYPICAL_CHUNK)),
            ("dumps token dict", "orjson (bytes)", lambda: o.dumps(frame)),
            ("dumps token dict", "orjson + .decode() (str)", lambda: o.dumps(frame).decode()),
            ("dumps str", "orjson", lambda: o.dumps(s)),
        ]
    if "msgspec" in setups:
        m = setups["msgspec"]
        gdec = m.json.Decoder().decode
        tdec = m.json.Decoder(msgspec_chunk_type()).decode
        enc = m.json.Encoder().encode
        cases += [
            ("loads 250 B chunk", "msgspec (untyped)", lambda: gdec(TYPICAL_CHUNK)),
            ("loads 250 B chunk", "msgspec (typed Struct)", lambda: tdec(TYPICAL_CHUNK)),
            ("dumps token dict", "msgspec (bytes)", lambda: enc(frame)),
            ("dumps str", "msgspec", lambda: enc(s)),
        ]
    order = {"loads 250 B chunk": 0, "dumps token dict": 1, "dumps str": 2}
    cases.sort(key=lambda c: order[c[0]])
    for op, lib, fn in cases:
        t = timeit.Timer(fn)
        n, _ = t.autorange()
        n = max(n, 10000)
        best = min(t.repeat(repeat=5, number=n)) / n * 1e9
        rows.append((op, lib, best))
        if not quiet:
            print(f"  json-bench {op:<18} {lib:<26} {best:8.0f} ns/op", flush=True)
    return rows


def cmd_jsonbench(args) -> None:
    print(json.dumps(json_bench(quiet=True)))


# --------------------------------------------------------------------------- #
# Orchestrator
# --------------------------------------------------------------------------- #
def start(argv: list, timeout: float = 30.0) -> tuple:
    """Start `python this_script argv`, wait for its READY line, return (proc, port)."""
    p = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            err = p.stderr.read()
            raise RuntimeError(f"{argv[0]} exited before READY: {err.strip()[-2000:]}")
        if line.startswith("READY "):
            return p, int(line.split()[1])
    stop(p)
    raise RuntimeError(f"{argv[0]} not ready after {timeout}s")


def stop(p: subprocess.Popen) -> str:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    try:
        return p.stderr.read() if p.stderr else ""
    except Exception:
        return ""


def run_load(port: int, args, rounds: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "_load",
            "--url",
            f"ws://127.0.0.1:{port}/ws",
            "--conns",
            str(args.conns),
            "--tokens",
            str(args.tokens),
            "--rounds",
            str(rounds),
            "--loop",
            args.loop,
        ],
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr.strip()[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_once(variant: str, up_url: str, args) -> dict:
    relay, port = start(["_relay", "--variant", variant, "--upstream", up_url, "--loop", args.loop])
    try:
        if args.warmup_rounds:
            w = run_load(port, args, args.warmup_rounds)
            if w["n_errors"]:
                raise RuntimeError(f"warm-up errors: {w['errors']}")
        time.sleep(0.2)
        c0 = cpu_seconds(relay.pid)
        r = run_load(port, args, args.rounds)
        c1 = cpu_seconds(relay.pid)
        if relay.poll() is not None:
            raise RuntimeError("relay died during load")
    finally:
        err = stop(relay)
    expected = args.conns * args.tokens * args.rounds
    if r["n_errors"] or r["tokens"] != expected:
        raise RuntimeError(f"tokens {r['tokens']}/{expected}, errors {r['errors']} {err.strip()[-500:]}")
    cpu = c1 - c0
    return {
        "cpu_s": cpu,
        "tokens": r["tokens"],
        "us_per_token": cpu / r["tokens"] * 1e6,
        "wall_s": r["wall"],
        "tok_per_s": r["tokens"] / r["wall"],
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "aiohttp",
        "orjson",
        "msgspec",
        "uvicorn",
        "websockets",
        "starlette",
        "httpx",
        "picows",
        "aiofastnet",
        "uvloop",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def cmd_run(args) -> None:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"unknown variant {v!r}; choose from {','.join(VARIANTS)}")
    vers = versions()
    print("# versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()), flush=True)
    print(
        f"# nproc={os.cpu_count()} loop={args.loop} conns={args.conns} tokens={args.tokens} "
        f"rounds={args.rounds} warmup_rounds={args.warmup_rounds} reps={args.reps} "
        f"upstream_batch={args.batch} pace_ms={args.pace_ms}",
        flush=True,
    )

    json_rows = []
    if not args.skip_json:
        print("# JSON micro-benchmark (min of 5 repeats, ns/op)", flush=True)
        json_rows = json_bench()
    if args.json_only:
        print_json_table(json_rows)
        return

    # every token "tok ", which the load client checks; --fast: no TTFT, no pacing but --pace-ms
    up = simulate("--fast", "--text", "tok ", "--batch", str(args.batch), "--pace-ms", str(args.pace_ms))
    up_url = up.http + "/v1/chat/completions"
    results = {v: [] for v in variants}
    failures = {v: [] for v in variants}
    try:
        for rep in range(1, args.reps + 1):
            for v in variants:  # interleave variants to spread machine noise
                if len(failures[v]) >= 2 and not results[v]:
                    continue  # gave up on this variant
                t0 = time.time()
                try:
                    m = measure_once(v, up_url, args)
                except Exception as e:
                    failures[v].append(str(e))
                    print(f"[rep {rep}/{args.reps}] {v}: FAILED: {str(e)[:400]}", flush=True)
                    continue
                results[v].append(m)
                print(
                    f"[rep {rep}/{args.reps}] {v}: {m['us_per_token']:6.2f} us/token  "
                    f"cpu {m['cpu_s']:.2f}s  tokens {m['tokens']}  {m['tok_per_s']:,.0f} tok/s wall  "
                    f"({time.time() - t0:.1f}s)",
                    flush=True,
                )
    finally:
        up.stop()

    print()
    print(
        f"## Relay CPU per token ({args.conns} WS x {args.tokens} tokens x {args.rounds} rounds per run, "
        f"{args.reps} runs, loop={args.loop})"
    )
    print()
    print(
        "| variant | stack | median µs/token | min µs/token | tokens counted per run | runs ok | median tok/s (wall) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for v in variants:
        rs = results[v]
        if not rs:
            print(f"| {v} | {VARIANTS[v]} | FAILED | | | 0/{args.reps} | |")
            continue
        us = [r["us_per_token"] for r in rs]
        print(
            f"| {v} | {VARIANTS[v]} | {statistics.median(us):.2f} | {min(us):.2f} | {rs[0]['tokens']:,} | "
            f"{len(rs)}/{args.reps} | {statistics.median(r['tok_per_s'] for r in rs):,.0f} |"
        )
    for v in variants:
        if failures[v]:
            print(f"\n{v} failures: " + " | ".join(f[:300] for f in failures[v]))
    if json_rows:
        print()
        print_json_table(json_rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "versions": vers,
                    "args": vars(args),
                    "results": results,
                    "failures": failures,
                    "json_bench": json_rows,
                },
                f,
                indent=1,
            )


def print_json_table(rows: list) -> None:
    print(f"## JSON micro-benchmark (ns/op, min of 5; chunk = {len(TYPICAL_CHUNK)} bytes)")
    print()
    print("| operation | library | ns/op |")
    print("|---|---|---:|")
    for op, lib, ns in rows:
        print(f"| {op} | {lib} | {ns:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Variants: " + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items())
    )
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list (default: all)")
    ap.add_argument("--reps", type=int, default=5, help="fresh relay process per rep (default 5)")
    ap.add_argument("--conns", type=int, default=20, help="concurrent WebSockets (default 20)")
    ap.add_argument("--tokens", type=int, default=2000, help="tokens per request (default 2000)")
    ap.add_argument("--rounds", type=int, default=3, help="requests per WebSocket, measured (default 3)")
    ap.add_argument("--warmup-rounds", type=int, default=1, help="unmeasured rounds first (default 1)")
    ap.add_argument("--batch", type=int, default=1, help="SSE events per upstream write (default 1)")
    ap.add_argument(
        "--pace-ms", type=float, default=0.0, help="upstream sleep between writes, ms (default 0 = as fast as possible)"
    )
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("--timeout", type=float, default=600, help="per load-client run, s")
    ap.add_argument("--skip-json", action="store_true", help="skip the JSON micro-benchmark")
    ap.add_argument("--json-only", action="store_true", help="only the JSON micro-benchmark")
    ap.add_argument("--out", help="also write raw results as JSON to this file")
    sub = ap.add_subparsers(dest="cmd", help=argparse.SUPPRESS, metavar="")
    s = sub.add_parser("_relay")
    s.add_argument("--variant", required=True, choices=list(VARIANTS))
    s.add_argument("--upstream", required=True)
    s.add_argument("--loop", default="asyncio")
    s = sub.add_parser("_load")
    s.add_argument("--url", required=True)
    s.add_argument("--conns", type=int, default=20)
    s.add_argument("--tokens", type=int, default=2000)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--loop", default="asyncio")
    s = sub.add_parser("_jsonbench")
    args = ap.parse_args()
    if args.cmd == "_relay":
        cmd_relay(args)
    elif args.cmd == "_load":
        set_loop_policy(args.loop)
        cmd_load(args)
    elif args.cmd == "_jsonbench":
        cmd_jsonbench(args)
    else:
        cmd_run(args)


if __name__ == "__main__":
    main()
