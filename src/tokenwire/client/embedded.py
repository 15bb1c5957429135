"""An in-process gateway for ``tokenwire chat``/``ask`` when nothing listens at the default URL.

It runs on its own event loop in a daemon thread, on a free port, with the same settings
``tokenwire serve`` would load (simulated models when no provider is configured).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

__all__ = ["EmbeddedGateway", "is_listening"]


def is_listening(url: str, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at the URL's host and port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedGateway:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tokenwire-gateway", daemon=True)
        self.runner: object | None = None
        self.url = ""
        self.providers = ""
        self.log_path: Path | None = None
        self._log: IO[str] | None = None

    def start(self) -> str:
        """Start serving; returns the WebSocket URL."""
        from aiohttp import web

        from ..config import default_db_path, load_settings
        from ..runtime.metrics import setup_event_log
        from ..server.app import build_gateway, create_app

        settings = load_settings(None, overrides={"host": "127.0.0.1", "port": 0})
        # The gateway's JSON log lines must not land in the middle of the chat on the terminal.
        self.log_path = Path(default_db_path()).parent / "embedded-gateway.log"
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a", encoding="utf-8")
        except OSError:
            self._log = open(os.devnull, "w", encoding="utf-8")
        setup_event_log(self._log)

        async def setup() -> str:
            gw = build_gateway(settings)
            runner = web.AppRunner(create_app(settings, gw), handle_signals=False, access_log=None, shutdown_timeout=1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runner = runner
            self.providers = ", ".join(
                f"{cfg.name}{' (simulated)' if p.simulated else ''}" for cfg, p in gw.router.providers
            )
            port = runner.addresses[0][1]
            return f"ws://127.0.0.1:{port}/ws/chat"

        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(setup(), self.loop).result(30)
        return self.url

    def stop(self) -> None:
        runner = self.runner
        if runner is not None:
            try:
                asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(10)  # type: ignore[attr-defined]
            except Exception:
                pass
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()
        if self._log is not None:
            from ..runtime.metrics import events_log

            for handler in list(events_log.handlers):
                if getattr(handler, "stream", None) is self._log:
                    events_log.removeHandler(handler)
            self._log.close()
            self._log = None
