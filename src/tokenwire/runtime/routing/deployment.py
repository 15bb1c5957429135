"""Deployments: one model on one provider, its circuit breaker and observed latency.

``Policy`` holds the routing numbers from Settings (timeouts, retries, breaker thresholds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ...protocol.errors import GatewayError
from ...upstream.base import Provider

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Deployment", "Policy"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_EWMA = 0.3  #: weight of the newest latency sample


@dataclass(frozen=True, slots=True)
class Policy:
    """The routing numbers from Settings (one object per gateway)."""

    first_token_timeout: float = 60.0
    #: the bound on a silent provider when ``first_token_timeout`` is 0 (no first-token limit)
    read_timeout: float = 120.0
    max_retries: int = 2
    retry_backoff: float = 0.25
    retry_max_wait: float = 5.0
    circuit_failures: int = 5
    circuit_cooldown: float = 30.0

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        return cls(**{f: getattr(settings, f) for f in cls.__dataclass_fields__ if hasattr(settings, f)})


class Deployment:
    """One model on one provider: its circuit breaker and observed time to first token.

    closed → (``circuit_failures`` consecutive failures) → open for ``circuit_cooldown``
    seconds, skipped → half-open: one request probes it → closed on success, open again
    on failure.
    """

    __slots__ = (
        "failures",
        "key",
        "last_error",
        "latency",
        "opened_at",
        "policy",
        "probe_started",
        "provider",
        "state",
        "stats",
        "upstream_model",
    )

    def __init__(self, provider: Provider, upstream_model: str, policy: Policy) -> None:
        self.provider = provider
        self.upstream_model = upstream_model
        self.key = f"{provider.name}/{upstream_model}"
        self.policy = policy
        self.state = CLOSED
        self.failures = 0  #: consecutive
        self.opened_at = 0.0
        self.probe_started: float | None = None
        self.latency: float | None = None  #: EWMA of time to first token (s)
        self.last_error: str | None = None
        self.stats = {"requests": 0, "successes": 0, "failures": 0, "skipped": 0, "opened": 0}

    def admit(self, now: float) -> bool:
        """May a request go here now? (An open circuit lets one probe through after the cool-down.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now - self.opened_at >= self.policy.circuit_cooldown:
            self.state = HALF_OPEN
            self.probe_started = None
        if self.state == HALF_OPEN:
            # one probe at a time; a probe that never reported back frees the slot after a cool-down
            if self.probe_started is None or now - self.probe_started >= self.policy.circuit_cooldown:
                self.probe_started = now
                return True
        self.stats["skipped"] += 1
        return False

    def success(self, ttft: float) -> None:
        self.stats["successes"] += 1
        self.failures = 0
        self.state = CLOSED
        self.probe_started = None
        self.latency = ttft if self.latency is None else self.latency + _EWMA * (ttft - self.latency)

    def failure(self, err: GatewayError | None = None, now: float | None = None) -> None:
        self.stats["failures"] += 1
        self.failures += 1
        if err is not None:
            self.last_error = err.code
        if self.state == HALF_OPEN or self.failures >= self.policy.circuit_failures:
            if self.state != OPEN:
                self.stats["opened"] += 1
            self.state = OPEN
            self.opened_at = time.monotonic() if now is None else now
            self.probe_started = None

    def retry_in(self, now: float) -> float:
        return max(0.0, self.policy.circuit_cooldown - (now - self.opened_at)) if self.state == OPEN else 0.0

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Plain data for /healthz and metrics."""
        now = time.monotonic() if now is None else now
        if self.state == OPEN and now - self.opened_at >= self.policy.circuit_cooldown:
            state = HALF_OPEN  # what admit() would do next
        else:
            state = self.state
        return {
            "deployment": self.key,
            "provider": self.provider.name,
            "upstream_model": self.upstream_model,
            "circuit": state,
            "consecutive_failures": self.failures,
            "retry_in_s": round(self.retry_in(now), 3),
            "ttft_ewma_ms": round(self.latency * 1000, 2) if self.latency is not None else None,
            "last_error": self.last_error,
            **self.stats,
        }
