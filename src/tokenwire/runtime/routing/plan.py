"""Choosing who answers: deployments, selection strategies, retries, fallbacks, circuit breakers.

A *deployment* is one model on one provider (e.g. ``gpt-4.1`` via HolySheep,
or via OpenAI). A request's :class:`Plan` lists groups of deployments: the
model's own (ordered by its strategy), then each fallback model's. Before the
first token, :func:`open_stream` walks the plan: an open circuit is skipped, a
429/5xx/connect error or a first-token timeout is retried with backoff
(``Retry-After`` honoured), then the next deployment is tried. Once a token has
arrived the relay owns the stream and never switches provider mid-answer.

All of this happens once per request; the per-token loop in the relay is untouched.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import aiohttp

from ...catalog import ModelInfo
from ...protocol import events as ev
from ...protocol.errors import GatewayError
from ...protocol.events import Event
from ...upstream.base import ChatCall, Provider, UpstreamStream
from .deployment import HALF_OPEN, OPEN, Deployment, Policy

__all__ = ["Attempt", "Group", "Plan", "Route", "open_stream"]


@dataclass(slots=True)
class Attempt:
    """One request to a provider before the first token, as tracing and timelines show it.

    ``end_ns`` is when it failed, or (for the one that answered) when its first events came;
    the relay's summary then knows it lasted until the end of the stream.
    """

    provider: str
    model: str  #: the provider's own model id
    start_ns: int  #: time.time_ns()
    end_ns: int = 0
    error: GatewayError | None = None
    span_id: int | None = None  #: the id sent to the provider in ``traceparent`` (tracing on)
    base_url: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    model: str  #: the catalog name being served (an alias resolved)
    upstream_model: str  #: the provider's own id
    provider: Provider
    deployment: Deployment | None = None  #: breaker and latency state of (provider, upstream_model)
    plan: Plan | None = None  #: every deployment to try, in order (on the route ``resolve`` returns)
    info: ModelInfo | None = None  #: catalog entry: prices, context window


@dataclass(slots=True)
class Group:
    """The deployments of one model and how to pick among them."""

    targets: list[Route]
    strategy: str = "ordered"
    weights: list[float] | None = None

    def ordered(self) -> list[Route]:
        targets = self.targets
        if len(targets) < 2 or self.strategy == "ordered":
            return list(targets)
        if self.strategy == "latency":
            # unmeasured deployments first (so each gets measured), then the fastest
            return sorted(targets, key=lambda t: -1.0 if t.deployment.latency is None else t.deployment.latency)
        weights = self.weights or [1.0] * len(targets)
        rest = list(zip(targets, weights, strict=True))
        out: list[Route] = []
        while rest:  # weighted draw without replacement
            total = sum(w for _, w in rest)
            if total <= 0:
                out += [t for t, _ in rest]
                break
            pick = random.uniform(0, total)
            for i, (t, w) in enumerate(rest):
                pick -= w
                if pick <= 0 or i == len(rest) - 1:
                    out.append(t)
                    del rest[i]
                    break
        return out


@dataclass(slots=True)
class Plan:
    groups: list[Group]
    policy: Policy = field(default_factory=Policy)

    def candidates(self) -> list[Route]:
        seen: set[int] = set()
        out = []
        for group in self.groups:
            for target in group.ordered():
                if id(target.deployment) not in seen:
                    seen.add(id(target.deployment))
                    out.append(target)
        return out


async def _attempt(provider: Provider, call: ChatCall, timeout: float) -> tuple[UpstreamStream, list[Event] | None]:
    """Send the request and read until the first answer event (token, reasoning or tool call).

    An error event before it is raised (so it can be retried elsewhere); events that came
    before it (model name, usage) are returned with it.
    """
    stream: UpstreamStream | None = None
    pending: list[Event] = []
    try:
        async with asyncio.timeout(timeout if timeout > 0 else None):
            stream = await provider.start(call)
            while True:
                events = await stream.read()
                if events is None:
                    return stream, pending or None
                for kind, value in events:
                    if kind == ev.ERROR:
                        raise value
                    if kind <= ev.TOOL_CALL:  # TOKEN, REASONING, TOOL_CALL
                        return stream, pending + events if pending else events
                pending += events
    except TimeoutError:
        if stream is not None:
            stream.close()
        what = "did not answer" if stream is None else "sent no first token"
        raise GatewayError(
            "upstream_timeout",
            f"{provider.name} {what} within {timeout:g} s",
            retryable=True,
            extra={"provider": provider.name},
        ) from None
    except aiohttp.ClientError as exc:
        if stream is not None:
            stream.close()
        raise GatewayError(
            "upstream_error",
            f"{provider.name} failed before the first token ({type(exc).__name__})",
            retryable=True,
            extra={"provider": provider.name},
        ) from None
    except BaseException:
        if stream is not None:
            stream.close()
        raise


async def open_stream(
    route: Route, call: ChatCall, log: list[Attempt] | None = None
) -> tuple[UpstreamStream, list[Event] | None, Route, int]:
    """Find a deployment that answers: returns its stream, its first events, its route and the attempts made.

    Raises the last error if every deployment failed (with ``attempts``), or
    ``upstream_unavailable`` if every circuit was open. Each request made is appended to
    ``log`` (once per attempt, never per token); with ``call.trace`` each also gets its own
    span id, sent to the provider as ``traceparent``.
    """
    trace = call.trace
    plan: Plan | None = route.plan
    policy = plan.policy if plan is not None else Policy()
    candidates = plan.candidates() if plan is not None else [route]
    last: GatewayError | None = None
    attempts = 0
    skipped: list[Deployment] = []
    for target in candidates:
        dep: Deployment | None = target.deployment
        if dep is not None and not dep.admit(time.monotonic()):
            skipped.append(dep)
            continue
        tcall = (
            call
            if target.upstream_model == call.model
            else ChatCall(target.upstream_model, call.messages, call.params, trace=trace)
        )
        for attempt in range(policy.max_retries + 1):
            attempts += 1
            t0 = time.monotonic()
            if dep is not None:
                dep.stats["requests"] += 1
            record = None
            if log is not None:
                provider = target.provider
                url = getattr(provider, "base_url", None)
                record = Attempt(provider.name, tcall.model, time.time_ns(), base_url=url)
                log.append(record)
                if trace is not None:
                    record.span_id, tcall.headers = trace.attempt()
            try:
                limit = policy.first_token_timeout if policy.first_token_timeout > 0 else policy.read_timeout
                stream, first = await _attempt(target.provider, tcall, limit)
            except GatewayError as err:
                last = err
                if record is not None:
                    record.end_ns, record.error = time.time_ns(), err
                if err.code == "upstream_bad_request" or (not err.retryable and err.code != "upstream_auth"):
                    if dep is not None and dep.state == HALF_OPEN:
                        dep.probe_started = None  # the request was at fault, not the deployment
                    err.extra.setdefault("attempts", attempts)
                    raise
                if dep is not None:
                    dep.failure(err)
                if not err.retryable or attempt == policy.max_retries:
                    break  # auth refused, or out of retries: next deployment
                retry_after = err.extra.get("retry_after")
                if retry_after is not None:
                    if retry_after > policy.retry_max_wait:
                        break  # not worth holding the client: next deployment
                    wait = float(retry_after)
                else:
                    wait = min(policy.retry_backoff * (2**attempt), policy.retry_max_wait)
                    wait *= 1 + 0.1 * random.random()
                if dep is not None and dep.state == OPEN:
                    break
                await asyncio.sleep(wait)
                continue
            except asyncio.CancelledError:
                if record is not None:
                    record.end_ns = time.time_ns()
                if dep is not None and dep.state == HALF_OPEN:
                    dep.probe_started = None
                raise
            if record is not None:
                record.end_ns = time.time_ns()
            if dep is not None:
                dep.success(time.monotonic() - t0)
            return stream, first, target, attempts
    if last is None:
        now = time.monotonic()
        wait = min((d.retry_in(now) for d in skipped), default=0.0)
        names = ", ".join(d.key for d in skipped)
        raise GatewayError(
            "upstream_unavailable",
            f"no deployment of {route.model} is available: circuit open for {names} (retry in {wait:.1f} s)",
            retryable=True,
            extra={"provider": route.provider.name, "retry_after": round(max(wait, 0.1), 1)},
        )
    last.extra.setdefault("attempts", attempts)
    raise last
