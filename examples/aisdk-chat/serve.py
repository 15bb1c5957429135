"""Serve the useChat page and forward ``/api/*`` to a tokenwire gateway (same origin, no CORS).

    npm ci && npm run build                    # public/app.js, bundled by esbuild
    tokenwire serve                            # the gateway on :8000
    python serve.py --gateway http://127.0.0.1:8000 --port 3000

This stands in for an app server (Next.js rewrites, nginx ``proxy_pass``): the page calls
``/api/chat`` on its own origin and the bytes of the UI message stream pass through as they
come (no buffering), so streaming, resume and stop behave as against the gateway itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

import aiohttp
from aiohttp import web

PUBLIC = Path(__file__).resolve().parent / "public"
#: request headers passed on to the gateway, and response headers passed back
_UP = ("content-type", "authorization", "accept")
_DOWN = ("content-type", "cache-control", "x-vercel-ai-ui-message-stream", "x-tokenwire-error-code", "retry-after")


def make_app(gateway: str, key: str | None = None) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application):
        app["session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        yield
        await app["session"].close()

    app.cleanup_ctx.append(session_ctx)

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() in _UP}
        if key and "authorization" not in {k.lower() for k in headers}:
            headers["Authorization"] = f"Bearer {key}"
        async with app["session"].request(
            request.method, gateway + request.path_qs, headers=headers, data=await request.read()
        ) as up:
            resp = web.StreamResponse(
                status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() in _DOWN}
            )
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PUBLIC / "index.html")

    app.router.add_route("*", "/api/{tail:.*}", proxy)
    app.router.add_get("/", index)
    app.router.add_static("/", PUBLIC)
    return app


async def serve(gateway: str, key: str | None, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(gateway, key))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]  # the port the OS gave (--port 0)
    print(f"useChat page on http://{host}:{bound}/ (gateway {gateway})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gateway", default="http://127.0.0.1:8000")
    ap.add_argument("--key", help="a tokenwire API key to add to requests (when the gateway has keys)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3000)
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.gateway.rstrip("/"), args.key, args.host, args.port))


if __name__ == "__main__":
    main()
