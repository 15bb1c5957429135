"""``tokenwire serve --workers N``: N gateway processes on one port, one per core.

One Python process relays on one core: a paced token costs it 23-40 µs of CPU,
a third of that in the kernel's ``recv``/``send`` (docs/benchmarks-load.md), so a
single process tops out near 40,000 tokens/s whatever the machine. Here the
kernel spreads new connections over N workers that each bind the same port with
``SO_REUSEPORT``.

Workers share no memory. A client that reconnects may reach another worker, so
resume, cancel and conversations go through Redis exactly as between instances on
different machines: ``workers > 1`` requires ``redis_url``. The supervisor holds
the port, restarts a worker that dies, and on SIGTERM/SIGINT lets every worker
drain (the same drain as a single process) before it exits.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

from ..config import ConfigError, Settings

__all__ = ["serve_workers"]

_CRASH_LOOP = 5  #: a worker that dies this many times in a row within _EARLY seconds of starting: give up
_EARLY = 5.0


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (not listen) a ``SO_REUSEPORT`` socket: it keeps the port ours and resolves port 0."""
    family, type_, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return sock


def _die_with_parent(parent: int) -> None:
    """Linux: a worker gets SIGTERM (and drains) if the supervisor is killed outright."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(settings: Settings, index: int, count: int, ready: Connection, parent: int, sockets: list[str]) -> None:
    from .app import run_server

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # still blocked; run_server handles, then unblocks them
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)
    try:
        run_server(settings, worker=(index, count), on_ready=lambda: ready.send(os.getpid()), worker_sockets=sockets)
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:
        print(f"tokenwire: worker {index}: configuration error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


class _Supervisor:
    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.count = settings.workers
        self.ctx = multiprocessing.get_context("fork")  # Settings need no pickling; the parent has no loop yet
        self.procs: list[Any] = [None] * self.count
        self.started: list[float] = [0.0] * self.count
        self.early_deaths = [0] * self.count
        self.stopping = False
        #: a private directory (0700) for the workers' Unix sockets: /metrics of the whole gateway
        self.sock_dir = tempfile.mkdtemp(prefix="tokenwire-workers-")
        self.sockets = [os.path.join(self.sock_dir, f"w{i}.sock") for i in range(self.count)]

    def spawn(self, i: int, timeout: float = 30.0) -> None:
        theirs, ours = self.ctx.Pipe(duplex=False)
        worker_settings = self._worker_settings()
        proc = self.ctx.Process(
            target=_worker,
            args=(worker_settings, i, self.count, ours, os.getpid(), self.sockets),
            name=f"tokenwire-worker-{i}",
        )
        # The worker starts with SIGINT/SIGTERM blocked, so neither can hit it before its event
        # loop handles them (it unblocks them then): a stop during start-up drains, never lost.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        ours.close()
        self.procs[i] = proc
        self.started[i] = time.monotonic()
        try:
            if not theirs.poll(timeout):
                proc.kill()
                raise RuntimeError(f"worker {i} did not start within {timeout:g} s (its output is above)")
            theirs.recv()
        except (EOFError, OSError):  # it exited before it was ready (its own error is above)
            proc.join(5)
            raise RuntimeError(f"worker {i} exited during start-up (code {proc.exitcode})") from None
        finally:
            theirs.close()

    def _worker_settings(self) -> Settings:
        from dataclasses import replace

        return replace(self.settings, port=self.port, workers=1)

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        s = self.settings
        try:
            for i in range(self.count):
                self.spawn(i)
        except RuntimeError as exc:
            print(f"tokenwire: {exc}", file=sys.stderr, flush=True)
            self.stopping = True
            self._shutdown()
            # a worker refused to start (its one line is above): the same exit code as one process
            return 2 if any(p is not None and p.exitcode == 2 for p in self.procs) else 1
        print(
            f"tokenwire listening on http://{s.host}:{self.port}  (WebSocket ws://{s.host}:{self.port}/ws/chat; "
            f"{self.count} workers, pids {' '.join(str(p.pid) for p in self.procs)}; streams shared over Redis)",
            flush=True,
        )
        code = 0
        while not self.stopping:
            time.sleep(0.2)
            for i, proc in enumerate(self.procs):
                if proc.is_alive() or self.stopping:
                    continue
                lived = time.monotonic() - self.started[i]
                self.early_deaths[i] = self.early_deaths[i] + 1 if lived < _EARLY else 0
                print(f"tokenwire: worker {i} (pid {proc.pid}) exited with code {proc.exitcode}", file=sys.stderr)
                if self.early_deaths[i] >= _CRASH_LOOP:
                    print(f"tokenwire: worker {i} keeps dying at start; stopping", file=sys.stderr, flush=True)
                    self.stopping, code = True, 1
                    break
                print(f"tokenwire: restarting worker {i}", file=sys.stderr, flush=True)
                try:
                    self.spawn(i)
                except RuntimeError as exc:
                    print(f"tokenwire: {exc}", file=sys.stderr, flush=True)
        print("tokenwire: draining…", flush=True)
        self._shutdown()
        return code

    def _shutdown(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout + 10
        for proc in self.procs:
            if proc is not None:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)


def serve_workers(settings: Settings) -> int:
    """Run ``settings.workers`` gateway processes on one port until SIGTERM/SIGINT."""
    if not settings.redis_url:
        raise ConfigError(
            f"workers = {settings.workers} needs redis_url (TOKENWIRE_REDIS_URL): a client that reconnects "
            "may reach another worker, and resume, cancel and conversations must find its stream there"
        )
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("workers > 1 needs SO_REUSEPORT, which this platform lacks: run one process per port")
    from .app import loop_factory

    loop_factory(settings.event_loop)  # a missing uvloop is a configuration error, said once, here
    reserved = _reserve(settings.host, settings.port)
    supervisor = _Supervisor(settings, reserved.getsockname()[1])
    try:
        return supervisor.run()
    finally:
        reserved.close()
        shutil.rmtree(supervisor.sock_dir, ignore_errors=True)
