"""What Linux's ``/proc`` says about a process: CPU time, resident memory, run-queue wait, children.

The one reader of ``/proc/<pid>/stat`` for the gateway's ``/metrics``, ``tokenwire loadtest``,
the research benchmarks (bench/research/) and the tests. Standard library only (no aiohttp, no
server import), so a benchmark script can load it whichever gateway tree it measures.

Every function raises ``OSError`` where there is no ``/proc`` (or the process is gone); callers
that must not fail (a ``/metrics`` scrape) catch it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["children", "cpu_seconds", "schedstat", "usage"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def usage(pid: int) -> tuple[int, float]:
    """(resident bytes, CPU seconds: user + system) of a process, from ``/proc/PID/stat``."""
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    try:
        return int(fields[21]) * _PAGE, (int(fields[11]) + int(fields[12])) / _TICK
    except (ValueError, IndexError) as exc:
        raise OSError(f"unreadable /proc/{pid}/stat") from exc


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    return usage(pid)[1]


def schedstat(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) from ``/proc/PID/schedstat``."""
    try:
        run_ns, wait_ns, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
        return int(run_ns) / 1e9, int(wait_ns) / 1e9
    except ValueError as exc:
        raise OSError(f"unreadable /proc/{pid}/schedstat") from exc


def children(pid: int) -> list[int]:
    """The direct children of a process (e.g. the workers of ``serve --workers``)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
