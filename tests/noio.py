"""The promise of tests/unit and tests/exhaustive: no processes, no sockets, no network.

Their conftest applies :func:`forbid_io` to every test, so a test that starts a process or opens an
IP socket fails at once with a clear message (it belongs in tests/e2e). Unix socket pairs stay
allowed: asyncio's event loop needs one to wake itself up.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from typing import Any

import pytest

_IP = (socket.AF_INET, socket.AF_INET6)


class IOForbidden(AssertionError):
    pass


def _refuse(what: str) -> Any:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise IOForbidden(f"{what} in a test without I/O: put this test in tests/e2e")

    return refuse


def forbid_io(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("connect", "connect_ex", "bind"):
        real = getattr(socket.socket, name)

        def guarded(self: socket.socket, *args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            if self.family in _IP:
                _refuse(f"socket.{_name}()")()
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(socket.socket, name, guarded)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse("socket.getaddrinfo()"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("a subprocess"))
    for name in ("create_connection", "create_server", "getaddrinfo", "subprocess_exec", "subprocess_shell"):
        monkeypatch.setattr(asyncio.BaseEventLoop, name, _refuse(f"loop.{name}()"))
