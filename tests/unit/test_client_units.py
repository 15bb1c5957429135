"""Client units with no I/O: backoff/jitter bounds and error mapping.
(Handshake and close-code handling against small in-process servers: e2e/test_client_handshakes.py.)"""

from __future__ import annotations

import random

import pytest

import tokenwire
from tokenwire.client import backoff_delay, error_from_event
from tokenwire.client.errors import (
    AuthError,
    BadRequestError,
    ConnectionLostError,
    ConversationBusyError,
    RateLimitError,
    ServerError,
    StreamExpiredError,
    UpstreamError,
)


def test_backoff_full_jitter_bounds() -> None:
    rng = random.Random(7)
    for attempt in range(10):
        bound = min(30.0, 1.0 * 2**attempt)
        samples = [backoff_delay(attempt, 1.0, 30.0, rng.uniform) for _ in range(2000)]
        assert all(0.0 <= s <= bound for s in samples), attempt
        # full jitter spreads over the whole range, not near the bound only
        assert min(samples) < 0.05 * bound and max(samples) > 0.95 * bound
        assert 0.4 * bound < sum(samples) / len(samples) < 0.6 * bound
    assert backoff_delay(0, 1.0, 30.0, lambda a, b: b) == 1.0
    assert backoff_delay(3, 1.0, 30.0, lambda a, b: b) == 8.0
    assert backoff_delay(10, 1.0, 30.0, lambda a, b: b) == 30.0  # capped
    assert backoff_delay(2, 0.5, 30.0, lambda a, b: a) == 0.0


@pytest.mark.parametrize(
    ("code", "cls", "retryable"),
    [
        ("unauthorized", AuthError, False),
        ("forbidden", AuthError, False),
        ("rate_limited", RateLimitError, True),
        ("upstream_rate_limited", RateLimitError, True),
        ("upstream_error", UpstreamError, True),
        ("upstream_timeout", UpstreamError, True),
        ("upstream_auth", UpstreamError, False),
        ("upstream_bad_request", BadRequestError, False),
        ("unknown_model", BadRequestError, False),
        ("bad_request", BadRequestError, False),
        ("conversation_busy", ConversationBusyError, True),
        ("stream_expired", StreamExpiredError, False),
        ("internal_error", ServerError, False),
        ("something_new", ServerError, False),
    ],
)
def test_error_mapping(code: str, cls: type, retryable: bool) -> None:
    event = {"type": "error", "id": "r1", "code": code, "message": f"msg {code}", "retryable": retryable}
    err = error_from_event(event)
    assert type(err) is cls
    assert isinstance(err, tokenwire.TokenwireError)
    assert (err.code, err.message, err.retryable) == (code, f"msg {code}", retryable)
    assert err.details["id"] == "r1"


def test_error_mapping_keeps_retry_after_and_defaults() -> None:
    event = {"type": "error", "code": "upstream_rate_limited", "message": "slow down", "retry_after": 1.5}
    err = error_from_event(event)
    assert isinstance(err, RateLimitError) and err.retry_after == 1.5 and err.retryable  # class default
    assert ConnectionLostError("connection_lost", "x").retryable
