"""Redis for tests: the shared one on 127.0.0.1:6379 when it answers, else a private redis-server.

A private server (:class:`RedisServer`) can also be killed and restarted on the
same port, for the fault tests. Every test uses its own key prefix.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid

from eventually import eventually


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """PING over a raw socket (no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private ``redis-server`` (no persistence) a test may kill and restart."""

    def __init__(self, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited before it listened on port {self.port}")
            return ping(self.port)

        try:
            eventually(up, timeout=10, interval=0.02)
        except AssertionError:
            raise RuntimeError(f"redis-server did not start on port {self.port}") from None
        return self

    def kill(self) -> None:
        """Die at once, losing every key (what a crash or an unpersisted restart does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        self.kill()


def shared_or_private() -> tuple[str, RedisServer | None]:
    """The project machines' Redis if it answers, else a private server (always with TOKENWIRE_TEST_PRIVATE_REDIS=1)."""
    if ping(6379) and not os.environ.get("TOKENWIRE_TEST_PRIVATE_REDIS"):
        return "redis://127.0.0.1:6379/0", None
    server = RedisServer().start()
    return server.url, server


def new_prefix() -> str:
    return "twtest-" + uuid.uuid4().hex[:10]
