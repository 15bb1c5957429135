"""Run a load-generating process (fake upstream, benchmark clients) on the cheapest event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_fast"]

T = TypeVar("T")


def run_fast(coro: Coroutine[Any, Any, T]) -> T:
    """Run the load generator's own processes (fake upstream, clients) on uvloop when it is
    installed: they share the machine with the gateway, and the less CPU they take, the less
    the gateway's figures measure the load generator."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
