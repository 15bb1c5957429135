"""Start test processes from a zygote: ``python -m tokenwire ARGS`` without a new interpreter each time.

Why: an e2e test talks to real gateway and fake-upstream processes, ~500 of them in the suite,
and most of what one costs to start is not tokenwire but the interpreter and its imports (about
0.6 CPU-s for ``simulate``, 1 CPU-s for ``serve`` on the 2-core CI machine: two fifths of the
suite's CPU). One zygote per pytest process imports tokenwire once; each start is then a
``fork()``, in which the child takes the test's arguments, environment, working directory and
stdout, runs ``tokenwire.cli.main`` and exits through the interpreter's normal shutdown (atexit
handlers, thread joins). The processes are as real as before: their own pid, sockets, signals
and exit status, and the same code from ``main`` on. What is not exercised this way is the cold
import itself; the tests that run ``tokenwire`` as a command (``test_docs_runnable.py``,
``test_first_hour.py``'s console script, anything with a prefix) still do that.

A start falls back to a fresh interpreter (``subprocess.Popen``) when the zygote cannot stand in
for one: a prefix (valgrind, taskset), an environment that changes the interpreter itself
(``PYTHON*`` other than ``PYTHONUNBUFFERED``) or what was read while importing (``SSL_CERT_*``)
differently from the zygote's, or ``TOKENWIRE_TEST_FORK=0`` for every start.

The wire between the two: a ``SOCK_SEQPACKET`` socket pair; a request is one JSON message
carrying two descriptors (the child's stdout and a status pipe), the answer is the child's pid;
when a child ends, the zygote writes its exit code (``Popen.returncode``'s convention: ``-N``
for signal N) to its status pipe. The zygote ends when the test process closes its end (or dies:
``PR_SET_PDEATHSIG``), and kills the children still running then.

Run as a program (``python -u forkserver.py FD``) it is the zygote.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from typing import IO, Any

#: tokenwire's modules the zygote imports before forking (what ``serve`` and ``simulate`` load)
PRELOAD = (
    "uvloop",
    "tokenwire.cli",
    "tokenwire.server.app",
    "tokenwire.server.workers",
    "tokenwire.simulate.server",
    "tokenwire.simulate.wheel",
    "tokenwire.store.sqlite",
    "tokenwire.store.redis",
    "tokenwire.runtime.metrics",
)
_SAME_AS_ZYGOTE = ("PYTHON", "SSL_CERT_")  #: variable prefixes a forked start must share with the zygote
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux ``prctl``; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


# -- the test process's side ------------------------------------------------------------------
class Forked:
    """A child of the zygote, with the part of ``subprocess.Popen``'s interface the tests use."""

    def __init__(self, args: list[str], pid: int, stdout: int, status: int) -> None:
        self.args = args
        self.pid = pid
        self.stdout: IO[bytes] = os.fdopen(stdout, "rb")
        self.returncode: int | None = None
        self._status = status
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        return self._wait(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._wait(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def _wait(self, timeout: float | None) -> int | None:
        with self._lock:
            if self.returncode is None:
                ready, _, _ = select.select([self._status], [], [], timeout)
                if ready:
                    data = os.read(self._status, 64)
                    os.close(self._status)
                    # no code: the zygote died first, and took its children with it
                    self.returncode = int(data) if data.strip() else -signal.SIGKILL
            return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The test process's handle on its zygote."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = tempfile.TemporaryFile()
        self.popen = subprocess.Popen(
            [sys.executable, "-u", __file__, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        theirs.close()
        self.ctl = ours
        self.lock = threading.Lock()
        ours.settimeout(60)
        try:
            ready = ours.recv(64)
        except OSError:
            ready = b""
        if ready != b"ready":
            self.popen.kill()
            self.log.seek(0)
            raise RuntimeError(f"the test zygote did not start:\n{self.log.read().decode('utf-8', 'replace')}")
        ours.settimeout(None)

    def serves(self, env: dict[str, str]) -> bool:
        """Whether a child forked from this zygote is the same as a fresh interpreter with ``env``."""
        if self.popen.poll() is not None:
            return False
        for key in self.env.keys() | env.keys():
            if key.startswith(_SAME_AS_ZYGOTE) and key != "PYTHONUNBUFFERED" and self.env.get(key) != env.get(key):
                return False
        return True

    def fork(self, args: list[str], env: dict[str, str], cwd: str) -> Forked:
        out_r, out_w = os.pipe()
        status_r, status_w = os.pipe()
        request = json.dumps({"args": args, "env": env, "cwd": cwd}).encode()
        try:
            with self.lock:
                socket.send_fds(self.ctl, [request], [out_w, status_w])
                answer = self.ctl.recv(64)
        finally:
            os.close(out_w)
            os.close(status_w)
        if not answer.isdigit():
            os.close(out_r)
            os.close(status_r)
            raise RuntimeError(f"the test zygote could not fork: {answer.decode('utf-8', 'replace')}")
        return Forked(args, int(answer), out_r, status_r)

    def close(self) -> None:
        self.ctl.close()  # the zygote kills what is still running and exits
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def spawn(args: Iterable[str], env: dict[str, str], cwd: str | os.PathLike[str] | None) -> Forked | None:
    """``python -m tokenwire ARGS`` forked from this process's zygote; None where only a fresh one will do."""
    global _zygote
    if os.environ.get("TOKENWIRE_TEST_FORK", "1") == "0" or not hasattr(socket, "send_fds"):
        return None
    with _zygote_lock:
        if _zygote is None or _zygote.popen.poll() is not None:
            base = {k: v for k, v in env.items() if k.startswith(_SAME_AS_ZYGOTE) or k in ("PATH", "HOME", "LANG")}
            import atexit

            _zygote = Zygote(base)
            atexit.register(_zygote.close)
        zygote = _zygote
    if not zygote.serves(env):
        return None
    return zygote.fork(list(args), env, os.fspath(cwd) if cwd is not None else os.getcwd())


# -- the zygote ------------------------------------------------------------------------------
def _serve(ctl: socket.socket) -> tuple[dict[str, Any], int] | None:
    """Fork a child per request; report each one's end. Returns only in a child: (request, stdout fd)."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    running: dict[int, int] = {}  # pid -> the write end of its status pipe
    while True:
        _reap(running)
        try:
            ready, _, _ = select.select([ctl, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            os.read(wake_r, 4096)
        if ctl not in ready:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(ctl, 1 << 20, 2)
        except ConnectionError:
            message, fds = b"", []
        if not message:  # the test process is gone: so are its processes
            for pid in running:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return None
        out_w, status_w = fds
        try:
            request = json.loads(message)
            pid = os.fork()
        except Exception as exc:  # reported to the test, which raises it
            os.close(out_w)
            os.close(status_w)
            ctl.send(f"{type(exc).__name__}: {exc}".encode())
            continue
        if pid == 0:  # the child: leave the zygote's loop with nothing of its state
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (wake_r, wake_w, ctl.fileno(), status_w, *running.values()):
                os.close(fd)
            return request, out_w
        os.close(out_w)
        running[pid] = status_w
        ctl.send(str(pid).encode())


def _reap(running: dict[int, int]) -> None:
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = running.pop(pid, None)
        if fd is not None:
            os.write(fd, str(os.waitstatus_to_exitcode(status)).encode())
            os.close(fd)


def _run_child(request: dict[str, Any], out: int) -> int:
    """Become ``python -m tokenwire ARGS`` in the test's directory, environment and stdout."""
    _die_with_parent()  # the zygote's death (the test process's) ends this one
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import tokenwire
    from tokenwire.cli import main

    sys.argv = [os.path.join(os.path.dirname(tokenwire.__file__), "__main__.py"), *request["args"]]
    sys.path[0] = os.getcwd()  # as -m has it
    return main(request["args"])


def _zygote_main(fd: int) -> int:
    import importlib

    _die_with_parent()
    sys.path[0] = os.getcwd()  # not this file's folder (tests/); each child puts its own cwd there
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # an optional extra not installed: a child imports (and fails) as a fresh one would
    ctl = socket.socket(fileno=fd)
    ctl.send(b"ready")
    child = _serve(ctl)
    if child is None:
        return 0
    return _run_child(*child)


if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1].isdigit():
        # tokenwire.__main__ would run main() on import: keep it from doing so in the zygote
        sys.exit(_zygote_main(int(sys.argv[1])))
