"""Start real tokenwire processes (gateway, fake upstream) on ephemeral ports for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import forkserver

_LISTEN = re.compile(rb"listening on (https?)://([\d.]+):(\d+)")


@dataclass
class Proc:
    """A running tokenwire subcommand and the port it listens on."""

    popen: subprocess.Popen[bytes] | forkserver.Forked
    port: int
    host: str = "127.0.0.1"
    output: list[bytes] = field(default_factory=list)
    scheme: str = "http"  #: "https" for a fake upstream serving TLS (simulate --tls-cert)

    @property
    def http(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.host}:{self.port}/ws/chat"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        return b"".join(self.output).decode("utf-8", "replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def child_env() -> dict[str, str]:
    """The test's environment for a gateway it starts, without what would change its behaviour
    (the developer's ``TOKENWIRE_*`` settings, provider keys, ``OPENAI_BASE_URL``)."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("TOKENWIRE_")}
    env.pop("OPENAI_BASE_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(
    args: Iterable[str],
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
    cwd: str | Path | None = None,
    prefix: Iterable[str] = (),
) -> Proc:
    """Run ``python -m tokenwire ARGS`` and wait for its "listening on" line.

    Forked from a zygote that has tokenwire imported already (forkserver.py says when and why),
    else a fresh interpreter. ``prefix`` goes before the interpreter (e.g. ``valgrind
    --tool=callgrind``, for benchmarks)."""
    full_env = child_env()
    full_env.update(env or {})
    args = list(args)
    prefix = list(prefix)
    popen = None if prefix else forkserver.spawn(args, full_env, cwd)
    if popen is None:
        popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", "tokenwire", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
        )
    proc = Proc(popen, 0)
    found = threading.Event()

    def pump() -> None:
        assert popen.stdout is not None
        for line in iter(popen.stdout.readline, b""):
            proc.output.append(line)
            m = _LISTEN.search(line)
            if m and not found.is_set():
                proc.scheme = m.group(1).decode()
                proc.host = m.group(2).decode()
                proc.port = int(m.group(3))
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.05):
        if popen.poll() is not None or time.monotonic() > deadline:
            proc.stop(signal.SIGKILL)
            raise RuntimeError(f"tokenwire {' '.join(args)} did not start:\n{proc.text()}")
    return proc
