"""Wait for a condition instead of sleeping: ``eventually(lambda: x.done)``.

Both helpers call ``predicate`` until it returns something truthy and return that value; past
``timeout`` seconds they raise AssertionError with ``message`` and the last value seen. Exceptions
from the predicate are not swallowed. ``aeventually`` accepts a plain or an async predicate.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _failure(message: str, timeout: float, last: Any) -> AssertionError:
    return AssertionError(f"{message or 'condition not met'} (within {timeout} s; last value seen: {last!r})")


def eventually(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01, message: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _failure(message, timeout, last)
        time.sleep(interval)


async def aeventually(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = 5.0, interval: float = 0.01, message: str = ""
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _failure(message, timeout, last)
        await asyncio.sleep(interval)
