"""The shared wait helper (tests/eventually.py)."""

from __future__ import annotations

import itertools
import time

import pytest
from eventually import aeventually, eventually


def test_returns_the_first_truthy_value() -> None:
    calls = itertools.count()
    assert eventually(lambda: next(calls) >= 3 and "done", interval=0) == "done"
    assert next(calls) == 4  # called until true, not after


def test_times_out_with_the_message_and_the_last_value() -> None:
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"queue empty \(within 0.05 s; last value seen: \[\]\)"):
        eventually(lambda: [], timeout=0.05, message="queue empty")
    assert time.monotonic() - t0 >= 0.05


async def test_async_with_sync_and_async_predicates() -> None:
    calls = itertools.count()

    async def ready() -> int:
        return next(calls) >= 2 and 7

    assert await aeventually(ready, interval=0) == 7
    assert await aeventually(lambda: "x") == "x"
    with pytest.raises(AssertionError, match="last value seen: 0"):
        await aeventually(lambda: 0, timeout=0.02, message="never")


def test_exceptions_are_not_swallowed() -> None:
    with pytest.raises(ZeroDivisionError):
        eventually(lambda: 1 / 0)
