"""``tokenwire simulate``: a standalone fake upstream over real HTTP.

It speaks OpenAI Chat Completions (``POST /v1/chat/completions``), Anthropic
Messages (``POST /v1/messages``) and Gemini (``POST
/v1beta/models/{model}:streamGenerateContent?alt=sse``), each in its own wire
format (see :mod:`.wires`), with the same deterministic reply and faults.

Tests and benchmarks point the gateway at it as a real provider. Speed, chunk
splitting and faults are set on the command line for every request, or per
request with ``@key=value`` suffixes on the model name, e.g.
``gpt-4.1@fault=429``, ``m@fault=cut:5``, ``m@tokens=2000@tps=0``:

* ``fault=429`` / ``fault=500`` / ``fault=503``: an HTTP error with the provider's own error body
* ``times=N``: the fault hits only the first N requests for that exact model string
  (then the same request succeeds: retries can be tested)
* ``fault=cut:N``: the connection is cut after N tokens (no finish, no [DONE])
* ``fault=midchunk:N``: after N tokens, half of a chunk is sent (its size line promising it all),
  then the connection is cut: a close inside the HTTP framing
* ``fault=malformed:N``: the N-th chunk is not JSON
* ``fault=stall:N``: after N tokens the server stops sending (connection kept open)
* ``fault=error:N``: an in-band ``{"error": …}`` chunk after N tokens (HTTP 200)
* ``replay=NAME``: send the recorded stream NAME from ``--fixtures DIR`` byte for byte
  (with ``split=N``, in N-byte writes); with ``status=N`` under that HTTP status
* ``reasoning=N``: N reasoning tokens before the answer, in the format's own shape (OpenAI
  ``reasoning_content``, an Anthropic thinking block, Gemini ``thought`` parts)
* ``tokens=N``, ``tps=X`` (0 = as fast as possible), ``ttft=MS``, ``split=N`` (write each
  event in N-byte pieces), ``retry_after=S`` (with 429), ``batch=N`` (with tps=0: N tokens
  per write), ``pace=MS`` (with tps=0: a pause after each write)

``--text TEXT`` makes every token TEXT (benchmarks that check each token cheaply).
``--wheel`` runs the lean load-test engine instead (:mod:`.wheel`): OpenAI chunks only,
every stream paced by one timer, each token stamped with the time it was written.

``GET /_sim/stats`` reports requests, completed and aborted streams (with the
``time.monotonic()`` of the last abort, comparable across processes on Linux);
``GET /_sim/requests`` returns the last request bodies received; ``GET /_sim/headers`` the
trace headers (``traceparent``, ``tracestate``) each request came with.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from .reply import DEFAULT_MAX_TOKENS, PROFILES, estimate_tokens, reasoning_tokens, reply_tokens
from .wires import AnthropicWire, GeminiWire, Wire

__all__ = ["SimOptions", "create_sim_app", "run_simulator"]


@dataclass(slots=True)
class SimOptions:
    tokens: int | None = None  #: reply length (default: the request's max_tokens, else 100)
    tps: float | None = None  #: tokens/s; None = the model's seed speed; 0 = as fast as possible
    ttft_ms: float | None = None
    split: int = 0  #: write each SSE event in pieces of this many bytes (0 = whole)
    fault: str | None = None
    retry_after: float | None = None
    batch: int = 1  #: tokens per write when tps = 0
    pace_ms: float = 0.0  #: when tps = 0: a pause after each write of ``batch`` tokens
    text: str | None = None  #: every token is this text (instead of the deterministic reply)
    fixtures: str | None = None  #: folder of recorded streams for ``replay=NAME``
    replay: str | None = None
    status: int = 200
    times: int = 0  #: with ``fault``: apply it to the first N requests only (0 = always)
    reasoning: int = 0  #: reasoning tokens sent before the answer


#: model-name suffix ``@key=value`` -> (SimOptions field, how to read the value)
_SUFFIXES: dict[str, tuple[str, Any]] = {
    "fault": ("fault", str),
    "tokens": ("tokens", int),
    "tps": ("tps", float),
    "ttft": ("ttft_ms", float),
    "split": ("split", int),
    "retry_after": ("retry_after", float),
    "batch": ("batch", int),
    "pace": ("pace_ms", float),
    "replay": ("replay", str),
    "status": ("status", int),
    "times": ("times", int),
    "reasoning": ("reasoning", int),
}


def _apply_suffix(opts: SimOptions, model: str) -> tuple[SimOptions, str]:
    if "@" not in model:
        return opts, model
    base, *parts = model.split("@")
    changes: dict[str, Any] = {}
    for part in parts:
        key, _, value = part.partition("=")
        if key in _SUFFIXES:
            field, convert = _SUFFIXES[key]
            changes[field] = convert(value)
    return replace(opts, **changes), base


def _error_body(status: int) -> bytes:
    return Wire.error_body(status)


class Simulator:
    def __init__(self, defaults: SimOptions) -> None:
        self.defaults = defaults
        self.stats: dict[str, Any] = {
            "requests": 0,
            "streams": 0,
            "completed": 0,
            "aborted": 0,
            "active": 0,
            "last_abort_monotonic": None,
            "connections": 0,  #: TCP connections accepted (keep-alive reuse shows as fewer than requests)
        }
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)
        self.seen: dict[str, int] = {}  #: requests per model string, for ``times=N``
        self.request_times: deque[float] = deque(maxlen=200)  #: time.monotonic() of each request
        #: the trace headers of each request (``traceparent``, ``tracestate``; null when absent) with its
        #: path and model: how tests see the gateway's trace context reach the provider
        self.headers: deque[dict[str, Any]] = deque(maxlen=200)

    async def _body(self, request: web.Request) -> dict[str, Any] | None:
        self.stats["requests"] += 1
        self.request_times.append(time.monotonic())
        seen = {"path": request.path, "model": None}
        for name in ("traceparent", "tracestate"):
            seen[name] = request.headers.get(name)
        self.headers.append(seen)
        try:
            body = await request.json(loads=orjson.loads)
        except Exception:
            return None
        if not isinstance(body, dict):
            return None
        seen["model"] = body.get("model")
        self.recent.append(body)
        return body

    def _fault_response(self, opts: SimOptions, model: str, wire: type[Wire]) -> web.Response | None:
        """An HTTP error status, if the model string asks for one (and ``times`` allows)."""
        fault = opts.fault or ""
        if opts.times:
            self.seen[model] = self.seen.get(model, 0) + 1
            if self.seen[model] > opts.times:
                return None
        if not fault[:3].isdigit():
            return None
        headers = {}
        if opts.retry_after is not None:
            headers["Retry-After"] = f"{opts.retry_after:g}"
        return web.Response(
            status=int(fault[:3]),
            body=wire.error_body(int(fault[:3])),
            content_type="application/json",
            headers=headers,
        )

    async def _options(
        self, request: web.Request, model: str, wire: type[Wire]
    ) -> tuple[SimOptions, str, web.StreamResponse | None]:
        """(options for this request, the model without its ``@`` suffixes, and the response that
        answers it instead of a simulated reply: an HTTP fault or a recorded stream, else None)."""
        opts, base_model = _apply_suffix(self.defaults, model)
        refused = self._fault_response(opts, model, wire)
        if refused is not None:
            return opts, base_model, refused
        if opts.times and self.seen.get(model, 0) > opts.times:
            opts = replace(opts, fault=None)
        if opts.replay:
            return opts, base_model, await self._replay(request, opts)
        return opts, base_model, None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if body is None:
            return web.Response(status=400, body=_error_body(400), content_type="application/json")
        model = str(body.get("model") or "gpt-4.1")
        opts, base_model, early = await self._options(request, model, Wire)
        if early is not None:
            return early
        messages = body.get("messages") or []
        max_tokens = opts.tokens or body.get("max_tokens") or body.get("max_completion_tokens")
        tokens = reply_tokens(messages, max_tokens, opts.text)
        prompt_tokens = estimate_tokens(messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-sim",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": base_model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
                dumps=lambda o: orjson.dumps(o).decode(),
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        wire = Wire(base_model, prompt_tokens, include_usage)
        return await self._paced(request, base_model, tokens, wire, opts)

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/messages``: Anthropic's request shape in, its event stream out."""
        body = await self._body(request)
        if body is None:
            return web.Response(status=400, body=AnthropicWire.error_body(400), content_type="application/json")
        if not request.headers.get("x-api-key") or request.headers.get("anthropic-version") is None:
            return web.Response(status=401, body=AnthropicWire.error_body(401), content_type="application/json")
        model = str(body.get("model") or "claude-sonnet-4.5")
        opts, base_model, early = await self._options(request, model, AnthropicWire)
        if early is not None:
            return early
        messages = list(body.get("messages") or [])
        if body.get("system"):
            messages.insert(0, {"role": "system", "content": body["system"]})
        # Anthropic requests always carry max_tokens (the gateway defaults it to 4096):
        # treat it as a cap on the usual reply length, not as the length itself.
        max_tokens = int(body.get("max_tokens") or DEFAULT_MAX_TOKENS)
        tokens = reply_tokens(messages, opts.tokens or min(max_tokens, DEFAULT_MAX_TOKENS), opts.text)
        wire = AnthropicWire(base_model, estimate_tokens(messages), True, max_tokens)
        return await self._paced(request, base_model, tokens, wire, opts)

    async def gemini(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``."""
        model, _, action = request.match_info["target"].rpartition(":")
        body = await self._body(request)
        if body is None or action != "streamGenerateContent" or request.query.get("alt") != "sse":
            return web.Response(status=400, body=GeminiWire.error_body(400), content_type="application/json")
        if not request.headers.get("x-goog-api-key"):
            return web.Response(status=403, body=GeminiWire.error_body(403), content_type="application/json")
        body["_model"] = model
        opts, base_model, early = await self._options(request, model, GeminiWire)
        if early is not None:
            return early
        messages: list[dict[str, Any]] = []
        system = body.get("systemInstruction") or {}
        if system.get("parts"):
            messages.append({"role": "system", "content": " ".join(p.get("text", "") for p in system["parts"])})
        for c in body.get("contents") or []:
            role = "assistant" if c.get("role") == "model" else "user"
            messages.append({"role": role, "content": " ".join(p.get("text", "") for p in c.get("parts") or [])})
        max_tokens = (body.get("generationConfig") or {}).get("maxOutputTokens")
        tokens = reply_tokens(messages, opts.tokens or max_tokens, opts.text)
        wire = GeminiWire(base_model, estimate_tokens(messages), True)
        return await self._paced(request, base_model, tokens, wire, opts)

    async def _paced(
        self, request: web.Request, model: str, tokens: list[str], wire: Wire, opts: SimOptions
    ) -> web.StreamResponse:
        profile = PROFILES.get(model)
        tps = opts.tps if opts.tps is not None else (profile.tokens_per_s if profile else 50.0)
        ttft = opts.ttft_ms if opts.ttft_ms is not None else (profile.ttft_ms if profile else 100.0)
        if opts.tps == 0 and opts.ttft_ms is None:
            ttft = 0.0
        return await self._stream(request, wire, tokens, tps, ttft, opts)

    async def _stream(
        self,
        request: web.Request,
        wire: Wire,
        tokens: list[str],
        tps: float,
        ttft_ms: float,
        opts: SimOptions,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": wire.content_type, "Cache-Control": "no-cache"})
        await resp.prepare(request)
        self.stats["streams"] += 1
        self.stats["active"] += 1
        kind, _, arg = (opts.fault or "").partition(":")
        at = int(arg) if arg.isdigit() else 0
        transport = request.transport

        async def write(data: bytes) -> None:
            if opts.split > 0:
                for i in range(0, len(data), opts.split):
                    await resp.write(data[i : i + opts.split])
                    await asyncio.sleep(0)
            else:
                await resp.write(data)

        async def wait_until(due: float) -> None:
            # Sleep in short steps so a client that goes away is noticed quickly.
            while True:
                left = due - time.monotonic()
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("client went away")
                if left <= 0:
                    return
                await asyncio.sleep(min(left, 0.005))

        try:
            due = time.monotonic() + ttft_ms / 1000.0
            interval = 1.0 / tps if tps > 0 else 0.0
            if interval:
                await wait_until(due)
            if opts.reasoning and isinstance(wire, AnthropicWire):
                wire.text_index = 1  # a thinking block first, the answer in block 1
            opening = wire.open()
            if opening:
                await write(opening)
            if opts.reasoning:
                for token in reasoning_tokens(opts.reasoning):
                    if interval:
                        due += interval
                        await wait_until(due)
                    await write(wire.reasoning(token))
                await write(wire.end_reasoning())
            batch: list[bytes] = []
            for i, token in enumerate(tokens):
                if kind == "cut" and i == at:
                    if transport is not None:
                        transport.close()
                    return resp
                if kind == "midchunk" and i == at and transport is not None:
                    event = wire.token(token)  # aiohttp's writer has flushed: the raw bytes follow its chunks
                    transport.write(b"%x\r\n%b" % (len(event), event[: len(event) // 2]))
                    transport.close()
                    return resp
                if kind == "stall" and i == at:
                    await wait_until(time.monotonic() + 3600)
                if kind == "error" and i == at:
                    await write(wire.error())
                    self.stats["completed"] += 1
                    return resp
                if kind == "malformed" and i == at:
                    event = wire.malformed()
                else:
                    event = wire.token(token)
                if interval:
                    due += interval
                    await wait_until(due)
                    await write(event)
                else:
                    batch.append(event)
                    if len(batch) >= opts.batch:
                        await write(b"".join(batch))
                        batch.clear()
                        if opts.pace_ms:
                            await wait_until(time.monotonic() + opts.pace_ms / 1000.0)
            if batch:
                await write(b"".join(batch))
            await write(wire.tail(len(tokens)))
            await resp.write_eof()
            self.stats["completed"] += 1
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            self.stats["aborted"] += 1
            self.stats["last_abort_monotonic"] = time.monotonic()
        finally:
            self.stats["active"] -= 1
        return resp

    async def _replay(self, request: web.Request, opts: SimOptions) -> web.StreamResponse:
        """Send a recorded provider stream exactly as recorded."""
        from pathlib import Path

        name = opts.replay or ""
        folder = Path(opts.fixtures or ".")
        path = folder / name
        if not opts.fixtures or "/" in name or not path.is_file():
            return web.Response(status=404, text=f"no fixture {name!r} (start with --fixtures DIR)")
        raw = path.read_bytes()
        ctype = "application/json" if name.endswith(".json") else "text/event-stream; charset=utf-8"
        resp = web.StreamResponse(status=opts.status, headers={"Content-Type": ctype})
        await resp.prepare(request)
        self.stats["streams"] += 1
        step = opts.split or len(raw)
        try:
            for i in range(0, len(raw), step):
                await resp.write(raw[i : i + step])
                if opts.split:
                    await asyncio.sleep(0)
            await resp.write_eof()
            self.stats["completed"] += 1
        except ConnectionError:
            self.stats["aborted"] += 1
        return resp

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "simulated"} for name in PROFILES]
        return web.json_response({"object": "list", "data": data})

    async def stats_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def requests_handler(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.recent), dumps=lambda o: orjson.dumps(o).decode())

    async def headers_handler(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.headers))

    async def request_times_handler(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.request_times))


def create_sim_app(defaults: SimOptions | None = None) -> web.Application:
    sim = Simulator(defaults or SimOptions())
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["simulator"] = sim
    for prefix in ("", "/v1"):
        app.router.add_post(prefix + "/chat/completions", sim.chat)
        app.router.add_get(prefix + "/models", sim.models)
    for prefix in ("", "/v1"):
        app.router.add_post(prefix + "/messages", sim.anthropic)
    for prefix in ("", "/v1beta", "/v1"):
        app.router.add_post(prefix + "/models/{target}", sim.gemini)
    app.router.add_get("/_sim/stats", sim.stats_handler)
    app.router.add_get("/_sim/request_times", sim.request_times_handler)
    app.router.add_get("/_sim/requests", sim.requests_handler)
    app.router.add_get("/_sim/headers", sim.headers_handler)
    return app


def run_simulator(host: str, port: int, defaults: SimOptions, cert: str | None = None, key: str | None = None) -> None:
    """Serve until interrupted; with ``cert`` (and ``key``) over TLS (a local HTTPS provider for tests)."""

    async def main() -> None:
        app = create_sim_app(defaults)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sim: Simulator = app["simulator"]
        factory = runner.server

        def counted() -> Any:
            sim.stats["connections"] += 1
            return factory()

        tls = None
        if cert:
            import ssl

            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(cert, key)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(counted, host, port, ssl=tls, backlog=4096)
        real_port = server.sockets[0].getsockname()[1]
        scheme = "https" if tls else "http"
        print(f"tokenwire simulate listening on {scheme}://{host}:{real_port}/v1", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
