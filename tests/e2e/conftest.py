"""Fixtures shared by the e2e tests (those for every kind are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redisutil import shared_or_private


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The machine's Redis on 127.0.0.1:6379 if it answers, else a private ``redis-server`` for the module."""
    url, server = shared_or_private()
    yield url
    if server is not None:
        server.stop()
