"""The token bucket behind every per-minute limit, on a fake clock. (The limits through a gateway:
e2e/test_security_limits.py.)"""

from __future__ import annotations

import pytest

from tokenwire.auth.limits import TokenBucket


def test_token_bucket_exact() -> None:
    b = TokenBucket.per_minute(60, now=0.0)
    assert all(b.take(0.0) == 0 for _ in range(60))
    assert b.take(0.0) == pytest.approx(1.0)  # one unit a second
    assert b.take(0.5) == pytest.approx(0.5)
    assert b.take(1.0) == 0
    t = TokenBucket.per_minute(600, now=0.0)
    t.debit(0.0, 700)  # a reply may overdraw
    assert t.wait_positive(0.0) == pytest.approx(101 / 10)
    assert t.wait_positive(11.0) == 0
