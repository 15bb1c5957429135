"""Runs generations: upstream events in, encoded frames out to every subscriber.

One asyncio task per generation (never per token). The token loop does one
``Generation.token`` (a bytes format), one list append and one frame write per
subscriber; pause is an ``asyncio.Event`` checked between tokens, and while it
is clear the upstream response is not read, so TCP flow control holds the
provider back and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..catalog import price
from ..protocol.errors import GatewayError
from ..protocol.events import END, ERROR, FINISH, MODEL, REASONING, START, TOKEN, TOOL_CALL, USAGE, Event
from ..protocol.frames import Chat
from ..protocol.stream import CANCELLED, COMPLETED, FAILED, Generation
from ..simulate.reply import estimate_tokens
from ..store.base import ConversationStore, owner_of
from ..upstream.base import ChatCall, UpstreamStream
from .history import fit_history
from .routing import Route
from .routing.plan import Attempt, open_stream
from .summary import RunSummary
from .tracing import INCOMING, start_trace

__all__ = ["Registry", "Run", "Subscriber", "conversation_key", "sane_usage", "stream_key"]

log = logging.getLogger("tokenwire.relay")

READ_TIMEOUT = "upstream_timeout"  #: the cancel reason the read watchdog gives


def conversation_key(conversation_id: str | None, owner: Any) -> str | None:
    """Where a conversation is stored: under the id of the API key that uses it.

    So one key can never read or continue another key's conversation, even knowing
    its id; the client only ever sees its own id. Without keys (open mode) the id
    is used as given.
    """
    if conversation_id is None:
        return None
    return conversation_owner(owner) + conversation_id


def conversation_owner(owner: Any) -> str:
    """The prefix of every conversation of one API key (``""`` in open mode): what a list is filtered by."""
    key_id = getattr(owner, "key_id", None)
    return f"k/{key_id}/" if key_id else ""


def stream_key(stream_id: str, owner: Any) -> str:
    """Where a generation is registered (locally and in Redis): under the id of its API key.

    So one key's stream ids never collide with, block or reveal another key's: the same
    ``stream_id`` chosen by two keys names two generations. The client only ever sees its own
    id. Without keys (open mode) the id is used as given.
    """
    key_id = getattr(owner, "key_id", None)
    return f"k/{key_id}/{stream_id}" if key_id else stream_id


class Subscriber(Protocol):
    """Something that watches a generation: a socket, an SSE response, a collector."""

    def send(self, rest: bytes, kind: int, value: Any) -> Awaitable[None] | None:
        """Deliver one event (``rest`` is its id-less v1 encoding).

        Returns ``None`` when the event is fully handed over, or an awaitable the
        relay must wait on first (backpressure). Keeping the common case
        synchronous saves a coroutine per token per layer.
        """
        ...


class Run:
    """One generation in flight (or recently ended, kept for resume)."""

    __slots__ = (
        "_backlog",
        "_expiry",
        "_push_end",
        "_reading",
        "_wake",
        "answered_model",
        "attempts",
        "cancel_reason",
        "cap",
        "chat",
        "conversation_id",
        "detached_at",
        "ended",
        "finish_reason",
        "finishing",
        "gate",
        "gen",
        "key",
        "max_gap",
        "on_end",
        "paused",
        "paused_by_socket",
        "paused_self",
        "pushing",
        "reads",
        "registry",
        "resumable",
        "resumes",
        "route",
        "started_ns",
        "subs",
        "summary",
        "t0",
        "task",
        "ttft",
        "turn",
        "upstream",
        "usage",
        "watch",
    )

    def __init__(
        self,
        registry: Registry,
        chat: Chat,
        route: Route,
        stream_id: str,
        conversation_id: str | None,
        resumable: bool,
    ) -> None:
        self.registry = registry
        self.chat = chat
        self.route = route
        self.gen = Generation(stream_id)
        #: where it is registered: the stream id scoped by its API key (see stream_key)
        self.key = stream_key(stream_id, chat.owner)
        self.conversation_id = conversation_id
        self.resumable = resumable
        self.subs: list[Subscriber] = []
        #: seconds: the longest pause between tokens seen so far (sampled by runtime.metrics, not per token)
        self.max_gap = 0.0
        self.gate = asyncio.Event()
        self.gate.set()
        self.paused_self = False
        self.paused_by_socket = False
        #: either of them: ``gate`` is clear (read per token, where ``gate.is_set()`` would be a call)
        self.paused = False
        self.upstream: UpstreamStream | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancel_reason: str | None = None
        self.ended = asyncio.Event()
        self.detached_at: float | None = None
        self._expiry: asyncio.TimerHandle | None = None
        #: bumped before and after each upstream read: odd while one is outstanding, so the
        #: registry's one watchdog task can spot a silent provider (no timer per read)
        self.reads = 0
        self.watch: tuple[int, float] = (0, 0.0)  #: the watchdog's last (reads, when it changed)
        #: the client's new messages (and a new system prompt), stored with the reply at its end
        self.turn: tuple[list[dict[str, Any]], str | None] | None = None
        self.finishing = False
        #: how it ended (set once, before ``end`` goes out): what every ``on_finish`` hook reads
        self.summary: RunSummary | None = None
        #: awaited with the run once its summary is set and before ``end`` goes out (an entry
        #: point's own bookkeeping, e.g. a stored Responses API object); errors are logged
        self.on_end: Callable[[Run], Awaitable[None]] | None = None
        # What the token loop (_deliver) records, read by _finish: attributes, not locals, since
        # the push path runs that loop in the upstream connection's callback, not in the task.
        self.t0 = 0.0
        self.ttft: float | None = None
        self.cap = 0
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.answered_model = route.upstream_model
        # the push path (_follow): the task's wake-up, what it still has to deliver, whether we read
        self.pushing = False
        self._wake: asyncio.Future[Any] | None = None
        self._backlog: list[Event] | None = None
        self._push_end = False
        self._reading = False
        #: the requests made to providers (routing.open_stream), for the summary's attempts
        self.attempts: list[Attempt] = []
        self.started_ns = 0
        self.resumes: list[int] = []  #: time.time_ns() of each re-attach (Gateway.find_stream)

    @property
    def owner_key(self) -> str | None:
        """The id of the API key that started this generation (None in open mode)."""
        return getattr(self.chat.owner, "key_id", None)

    # -- control ------------------------------------------------------------
    def set_paused(self, *, by_socket: bool | None = None, self_: bool | None = None) -> None:
        if by_socket is not None:
            self.paused_by_socket = by_socket
        if self_ is not None:
            self.paused_self = self_
        self.paused = paused = self.paused_by_socket or self.paused_self
        if paused:
            self.gate.clear()
            if self.pushing:
                self._hold()  # the push path has no read to skip: stop the upstream reading itself
        else:
            self.gate.set()
            self._release()

    def cancel(self, reason: str = "cancelled") -> bool:
        """Stop now: the task is cancelled, which closes the upstream response at once.

        Once the generation is finishing (its reply being stored, ``end`` going out) there is
        nothing left to stop, and a cancel then must not cut the bookkeeping short. True if
        this call cancelled it (its ``end`` will give ``reason``).

        It may be called from inside the run's own task (a socket writer cutting a slow
        consumer while this task waits on its drain): the cancel then lands at the task's
        next suspension, which the writer makes the wait it is in (server.connection).
        """
        if self.task is not None and not self.task.done() and self.cancel_reason is None and not self.finishing:
            self.cancel_reason = reason
            if self.upstream is not None:
                self.upstream.close()
            self.task.cancel()
            return True
        return False

    def subscribe(self, sub: Subscriber) -> None:
        self.subs.append(sub)
        self.detached_at = None

    def unsubscribe(self, sub: Subscriber) -> None:
        try:
            self.subs.remove(sub)
        except ValueError:
            return
        if not self.subs:
            self.detached_at = time.monotonic()
            if self.paused_by_socket:
                self.set_paused(by_socket=False)
            if not self.gen.ended:
                if self.resumable:
                    self.registry.watch_detached(self)
                else:
                    self.cancel("client_gone")

    # -- the generation -----------------------------------------------------
    def _emit(self, rest: bytes, kind: int, value: Any) -> Awaitable[None] | None:
        """Hand an event to every subscriber; an awaitable if one of them needs waiting on."""
        subs = self.subs
        if len(subs) == 1:  # the usual case: no list copy, no coroutine
            sub = subs[0]
            try:
                wait = sub.send(rest, kind, value)
            except (ConnectionError, RuntimeError):
                self.unsubscribe(sub)
                return None
            return None if wait is None else self._settle(sub, wait)
        waits = []
        for sub in tuple(subs):
            try:
                wait = sub.send(rest, kind, value)
            except (ConnectionError, RuntimeError):
                self.unsubscribe(sub)
                continue
            if wait is not None:
                waits.append(self._settle(sub, wait))
        if not waits:
            return None
        return waits[0] if len(waits) == 1 else asyncio.gather(*waits)

    def _cork(self) -> list[Any] | None:
        """Cork every subscriber's socket connection (see WSConnection.cork); the corked ones."""
        corked = None
        for sub in self.subs:
            writer = getattr(sub, "writer", None)
            if writer is not None and writer.cork():
                if corked is None:
                    corked = [writer]
                else:
                    corked.append(writer)
        return corked

    async def _uncork(self, corked: list[Any]) -> None:
        """Send every corked writer's frames; wait for those past their buffer limit."""
        for writer in corked:
            try:
                wait = writer.uncork()
                if wait is not None:
                    await wait
            except (ConnectionError, RuntimeError):
                pass  # that socket is gone: its subscriber is dropped at its next write
        return None

    async def _settle(self, sub: Subscriber, wait: Awaitable[None]) -> None:
        try:
            await wait
        except (ConnectionError, RuntimeError):
            self.unsubscribe(sub)

    def _deliver(self, events: list[Event], i: int = 0) -> tuple[int, Awaitable[Any]] | None:
        """Hand ``events[i:]`` to the subscribers now, up to the first one that must be waited on.

        The token loop, shared by the read loop (:meth:`_relay`) and the push sink
        (:meth:`_pushed`, called in the upstream connection's ``data_received``): synchronous, so
        a paced token costs no future, task step or ``await``. Returns None when every event was
        handed over, else ``(index to go on from, what to await first)``: the pause gate before an
        event, or a subscriber's backpressure after one. Raises the provider's error and
        :class:`_ReplyCapped`.
        """
        gen = self.gen
        gate = self.gate
        emit = self._emit
        n = len(events)
        while i < n:
            kind, value = events[i]
            i += 1
            if kind == TOKEN:
                if self.ttft is None:
                    self.ttft = time.monotonic() - self.t0
                if self.paused:
                    return i - 1, gate.wait()
                if gen.token_count >= self.cap:  # a provider sending past max_tokens is cut there
                    raise _ReplyCapped
                wait = emit(gen.token(value), TOKEN, value)
                if wait is not None:
                    return i, wait
            elif kind == REASONING or kind == TOOL_CALL:
                if self.ttft is None:
                    self.ttft = time.monotonic() - self.t0
                if self.paused:
                    return i - 1, gate.wait()
                rest = gen.reasoning(value) if kind == REASONING else gen.tool_call(value)
                wait = emit(rest, kind, value)
                if wait is not None:
                    return i, wait
            elif kind == FINISH:
                self.finish_reason = value
            elif kind == USAGE:
                self.usage = value
            elif kind == MODEL:
                self.answered_model = value
            elif kind == ERROR:
                raise value
        return None

    async def _relay(self, events: list[Event]) -> None:
        """One batch through :meth:`_deliver`, waiting where it says; a burst leaves in one send per socket."""
        corked = self._cork() if len(events) > 1 else None
        try:
            step = self._deliver(events)
            while step is not None:
                if corked:
                    corked = await self._uncork(corked)
                await step[1]
                step = self._deliver(events, step[0])
        except BaseException:
            if corked:  # an error mid-burst: the tokens before it still go out, first
                _uncork_now(corked)
            raise
        if corked:
            await self._uncork(corked)

    # -- the push path: events delivered in the upstream connection's callback -----------
    async def _follow(self, stream: Any) -> None:
        """Let ``stream`` push its events into :meth:`_pushed`; wait only for what that cannot finish.

        The upstream Protocol calls the sink with each decoded batch (the simulated provider
        calls it from its pacing timer with the tokens due); the sink delivers it on the spot
        (:meth:`_deliver`). Only when a subscriber must be waited on (backpressure), the client
        paused, or the stream failed or ended does it hold the upstream reading
        (``pause_reading``: TCP then holds the provider back; the simulated one stops its
        timer) and wake this task, which waits, delivers the rest through :meth:`_relay` and
        lets the reading go on. One future per such wake-up, none per token.
        """
        loop = asyncio.get_running_loop()
        self._backlog = None
        self._push_end = False
        self._wake = loop.create_future()
        self.pushing = True
        self._reading = True
        self.reads += 1  # odd: waiting on the provider (the read watchdog's rule)
        try:
            stream.push(self._pushed)
            while True:
                wake = self._wake
                try:
                    got = await wake
                except asyncio.CancelledError:
                    if wake.done() and not wake.cancelled():
                        _drop(wake.result())
                    raise
                if isinstance(got, BaseException):
                    raise got
                for wait in got:
                    try:
                        await wait
                    except (ConnectionError, RuntimeError):
                        pass  # that socket is gone: its subscriber is dropped at its next write
                while self._backlog:
                    batch, self._backlog = self._backlog, []
                    await self._relay(batch)
                if self._push_end:
                    return
                self._wake = loop.create_future()
                self._backlog = None
                self._release()
        finally:
            self.pushing = False

    def _pushed(self, events: list[Event] | None) -> None:
        """The push stream's sink (see :meth:`_follow`); ``None`` is the end of the stream."""
        self.reads += 2  # progress for the read watchdog, its parity unchanged
        backlog = self._backlog
        if backlog is not None:  # the task is working through an earlier batch: queue behind it
            if events is None:
                self._push_end = True
            else:
                backlog += events
            return
        if events is None:
            self._push_end = True
            self._stall([], [])
            return
        corked = self._cork() if len(events) > 1 else None
        try:
            step = self._deliver(events)
        except BaseException as exc:  # the provider's error, the reply cap: the task raises it
            if corked:
                _uncork_now(corked)
            self._stall([], exc)
            return
        waits = _uncork_now(corked) if corked else None
        if step is None and not waits:
            return  # the hot path: delivered within this callback
        waits = waits or []
        if step is not None:
            waits.append(step[1])
            self._stall(events[step[0] :], waits)
        else:
            self._stall([], waits)

    def _stall(self, backlog: list[Event], got: Any) -> None:
        """Hold the upstream reading and wake the task with what it must wait on (or raise)."""
        self._backlog = backlog
        self._hold()
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(got)
        elif not isinstance(got, BaseException):
            _drop(got)  # the task was cancelled meanwhile: nobody will await these

    def _hold(self) -> None:
        """Stop reading the provider (a stall, or the client paused)."""
        if self._reading:
            self._reading = False
            self.reads += 1  # even: no read outstanding, the watchdog leaves the run alone
            upstream = self.upstream
            if upstream is not None:
                upstream.pause_reading()  # type: ignore[attr-defined]

    def _release(self) -> None:
        """Read the provider again, unless a stall is still being worked through or the client paused."""
        if self.pushing and not self._reading and self._backlog is None and self.gate.is_set():
            self._reading = True
            self.reads += 1
            upstream = self.upstream
            if upstream is not None:
                upstream.resume_reading()  # type: ignore[attr-defined]

    async def run(self, call: ChatCall, start_fields: dict[str, Any]) -> None:
        gen = self.gen
        registry = self.registry
        self.t0 = t0 = time.monotonic()
        self.started_ns = time.time_ns()
        error: GatewayError | None = None
        status = COMPLETED
        self.answered_model = self.route.upstream_model
        stream: UpstreamStream | None = None
        capped = False
        params = call.params
        self.cap = params.get("max_tokens") or params.get("max_completion_tokens") or registry.max_output_tokens
        registry.stats["generations"] += 1
        try:
            # Retries, fallbacks and circuit breakers happen before the first token
            # (routing.open_stream); ``start`` then names who actually answers.
            stream, events, route, attempts = await open_stream(self.route, call, self.attempts)
            self.upstream = stream
            if route is not self.route:
                self.route = route
                self.answered_model = route.upstream_model
            _answered(start_fields, route, self.chat.model, attempts)
            wait = self._emit(gen.start(start_fields), START, start_fields)
            if wait is not None:
                await wait
            gate = self.gate
            # a stream that can push (our HTTP/1.1 providers, the simulated one) hands its events
            # over in its own callback (a socket read, a timer) once the first ones are out; one
            # without ``push`` (a test's fake, say) is read in this loop
            push = getattr(stream, "push", None)
            while events is not None:
                await self._relay(events)
                if not gate.is_set():
                    await gate.wait()
                if push is not None:
                    await self._follow(stream)
                    break
                self.reads += 1
                events = await stream.read()
                self.reads += 1
            if self.cancel_reason is not None:
                # Cancelled from inside this task (a subscriber's write found its client gone, which
                # closed the upstream response) and the closed stream then read as its end: the
                # pending cancel lands here, so the run ends cancelled, not completed.
                await asyncio.sleep(0)
        except _ReplyCapped:  # a provider that ignores max_tokens is cut there
            self.finish_reason = "length"
            capped = True
        except asyncio.CancelledError:
            status = CANCELLED
            if self.cancel_reason is None:
                self.cancel_reason = "shutdown"
            elif self.cancel_reason == READ_TIMEOUT:
                status = FAILED
                error = self._read_timeout()
        except GatewayError as exc:
            status, error = FAILED, exc
        except TimeoutError:
            status = FAILED
            error = self._read_timeout()
        except Exception as exc:  # never a traceback to the client
            log.exception("generation %s failed", gen.stream_id)
            status = FAILED
            error = GatewayError("internal_error", f"internal error ({type(exc).__name__})")
        finally:
            if stream is not None and (status != COMPLETED or capped):
                stream.close()
            self.upstream = None
        if stream is not None and error is not None and error.code.startswith("upstream_"):
            if self.route.deployment is not None:
                self.route.deployment.failure(error)  # a failure mid-answer counts for the breaker too
        if gen.seq < 0:  # nobody answered: ``start`` still opens the sequence
            try:
                wait = self._emit(gen.start(start_fields), START, start_fields)
                if wait is not None:
                    await wait
            except asyncio.CancelledError:
                pass
        total = time.monotonic() - t0
        self.finishing = True  # from here on a cancel changes nothing (see cancel)
        try:
            await self._finish(
                status, error, self.finish_reason, self.usage, self.ttft, total, self.answered_model, call
            )
        finally:  # whatever happened in it, the run ends and is accounted for
            self.ended.set()
            await registry.finished(self)

    def _read_timeout(self) -> GatewayError:
        return GatewayError(
            "upstream_timeout",
            f"{self.route.provider.name} sent nothing for {self.registry.read_timeout:g} s",
            retryable=True,
        )

    async def _finish(
        self,
        status: str,
        error: GatewayError | None,
        finish_reason: str | None,
        usage: dict[str, Any] | None,
        ttft: float | None,
        total: float,
        answered_model: str,
        call: ChatCall,
    ) -> None:
        gen = self.gen
        registry = self.registry
        n = gen.token_count
        estimated = False
        usage = sane_usage(usage) if usage else None
        if usage is None:
            estimated = True
            prompt = estimate_tokens(call.messages)
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        gen_time = total - ttft if ttft is not None else 0.0
        fields: dict[str, Any] = {
            "finish_reason": finish_reason
            if status == COMPLETED
            else ("cancelled" if status == CANCELLED else "error"),
            "usage": usage,
            "timing": {
                "ttft_ms": round(ttft * 1000, 2) if ttft is not None else None,
                # n tokens span n-1 intervals after the first one
                "tokens_per_s": round((n - 1) / gen_time, 2) if gen_time > 0 and n > 1 else None,
                "total_ms": round(total * 1000, 2),
            },
            "model": self.route.model,
            "provider": self.route.provider.name,
        }
        if answered_model != self.route.upstream_model:
            fields["upstream_model"] = answered_model
        chat = self.chat
        if chat.cut_by is not None and status == COMPLETED and n >= (chat.params.get("max_tokens") or 0):
            # max_tokens was cut to what the key's budget or tokens per minute left, and reached
            fields["finish_reason"] = "length"
            fields["limit"] = chat.cut_by
        # a run that failed before its first token costs nothing (RunSummary.billable): no price is shown
        cost = None if status == FAILED and n == 0 else price(self.route.info, usage)
        if cost is not None:
            fields["cost_usd"] = cost
        if estimated:
            fields["usage_estimated"] = (
                "the provider reported no usable usage: completion tokens counted, prompt ~4 chars/token"
            )
        if status == CANCELLED:
            fields["reason"] = self.cancel_reason
        if status == FAILED and error is not None:
            fields["error"] = {"code": error.code, "retryable": error.retryable}
            registry.stats["errors"] += 1
        registry.stats["tokens"] += n
        # The reply is in the history, and the conversation free, before anyone sees
        # ``end``: a client may send its next turn the moment it does. A turn that could not
        # be stored says so in ``end`` (the client would otherwise find it missing later).
        store_error = await registry.commit_reply(self, status)
        if store_error is not None:
            fields["stored"] = False
            fields["store_error"] = store_error
        self.summary = RunSummary(
            stream_id=gen.stream_id,
            status=status,
            finish_reason=fields["finish_reason"],
            model=self.route.model,
            provider=self.route.provider.name,
            usage=usage,
            usage_estimated=estimated,
            timing=fields["timing"],
            cost_usd=cost,
            tokens=n,
            resumable=self.resumable,
            chat=chat,
            reason=self.cancel_reason if status == CANCELLED else None,
            error=error if status == FAILED else None,
            upstream_model=fields.get("upstream_model"),
            reply=gen.answer,
            store_error=store_error,
            started_ns=self.started_ns,
            attempts=tuple(self.attempts),
            trace=call.trace,
            resumes=tuple(self.resumes),
            max_gap_s=self.max_gap if n > 1 else None,
        )
        if self.on_end is not None:
            try:
                await self.on_end(self)
            except Exception:
                log.exception("the end hook of %s failed", gen.stream_id)
        try:
            if error is not None:
                wait = self._emit(gen.error(error), ERROR, error)
                if wait is not None:
                    await wait
            wait = self._emit(gen.end(status, fields), END, fields)
            if wait is not None:
                await wait
        except asyncio.CancelledError:
            pass


def _answered(fields: dict[str, Any], route: Route, requested: str | None, attempts: int) -> None:
    """The ``start`` fields name the model and provider that actually answer."""
    fields["model"] = route.model
    fields["provider"] = route.provider.name
    fields["simulated"] = route.provider.simulated
    if requested and requested != route.model:
        fields["requested_model"] = requested
    if attempts > 1:
        fields["attempts"] = attempts


#: usage counts above this are not believed (a provider's bug, or a hostile one)
MAX_USAGE_TOKENS = 1_000_000_000
_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_USAGE_TOKENS


def sane_usage(usage: Any) -> dict[str, Any] | None:
    """A provider's usage, if it can be believed: non-negative integer counts below a sane cap.

    None (count the tokens instead) when a count is negative, not an integer (a string,
    1e300, a bool) or absurd, or when neither prompt nor completion tokens are given:
    such numbers were written into a key's totals and budget. The provider's extra
    fields are kept only where they are counts too (e.g. ``prompt_tokens_details``).
    """
    if type(usage) is not dict:
        return None
    got = {k: usage[k] for k in _COUNTS if usage.get(k) is not None}
    if not all(_count(v) for v in got.values()) or not ("prompt_tokens" in got or "completion_tokens" in got):
        return None
    prompt = got.get("prompt_tokens", 0)
    completion = got.get("completion_tokens", 0)
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": got.get("total_tokens") or prompt + completion,
    }
    for key, value in usage.items():
        if key in _COUNTS:
            continue
        if _count(value):
            out[key] = value
        elif type(value) is dict:
            details = {k: v for k, v in value.items() if _count(v)}
            if details:
                out[key] = details
    return out


def _uncork_now(corked: list[Any]) -> list[Awaitable[None]] | None:
    """Send every corked writer's frames now; what to wait on for those past their buffer limit."""
    waits = None
    for writer in corked:
        try:
            wait = writer.uncork()
        except (ConnectionError, RuntimeError):
            continue  # that socket is gone: its subscriber is dropped at its next write
        if wait is not None:
            if waits is None:
                waits = [wait]
            else:
                waits.append(wait)
    return waits


def _drop(waits: Any) -> None:
    """Close awaitables nobody will await (a cancelled run), so none is reported as never awaited."""
    if isinstance(waits, list):
        for wait in waits:
            close = getattr(wait, "close", None)
            if close is not None:
                close()


class _ReplyCapped(Exception):
    """The reply reached its max_tokens (raised inside the token loop to leave it)."""


class Registry:
    """Every generation this process runs or retains for resume, by key-scoped stream id (stream_key)."""

    #: a reply is cut here when the request named no max_tokens (Settings.max_output_tokens)
    max_output_tokens = 1_000_000
    #: Settings.max_history_messages / max_history_bytes (runtime.history.fit_history)
    max_history_messages = 0
    max_history_bytes = 0
    #: Settings.max_conversations_per_key: stored conversations one key may have (0: no cap)
    max_conversations = 0
    #: give each generation trace ids (runtime.tracing) for its spans: set by runtime.telemetry.install
    tracing = False
    #: called with the seconds each turn write to the store took (the metrics set it), failed ones too
    on_store_write: Callable[[float], None] | None = None

    def __init__(
        self,
        store: ConversationStore,
        retention: float,
        read_timeout: float = 120.0,
    ) -> None:
        self.store = store
        self.retention = retention
        self.read_timeout = read_timeout
        self.runs: dict[str, Run] = {}
        self.busy_conversations: set[str] = set()
        self.stats = {"generations": 0, "tokens": 0, "errors": 0, "resumes": 0, "unstored_turns": 0}
        #: why the last turn could not be stored (cleared by the next one that is): /healthz degraded
        self.store_error: str | None = None
        #: called once per ended run with its summary (metrics, logs, billing); errors are logged
        self.on_finish: list[Callable[[RunSummary], Awaitable[None]]] = []
        self._watchdog: asyncio.Task[None] | None = None

    @staticmethod
    def new_stream_id() -> str:
        return "s_" + uuid.uuid4().hex

    async def begin(
        self,
        chat: Chat,
        route: Route,
        conversation_id: str | None,
        resumable: bool,
        admit: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
    ) -> Run:
        """Prepare the prompt (loading and storing history), ``admit`` it, and start the task.

        ``admit`` (Gateway.start_chat's access check) gets the messages that will be sent, so a
        budget or TPM reservation counts the stored history, not just the request's own messages.
        """
        stream_id = chat.stream_id or self.new_stream_id()
        if stream_key(stream_id, chat.owner) in self.runs:
            raise GatewayError("duplicate_id", f"stream_id {stream_id} is already in use", extra={"id": chat.id})
        public_id, conversation_id = conversation_id, conversation_key(conversation_id, chat.owner)
        if conversation_id is not None and conversation_id in self.busy_conversations:
            raise GatewayError(
                "conversation_busy",
                f"conversation {public_id} is already generating a reply; wait for its end or cancel it",
                retryable=True,
                extra={"id": chat.id},
            )
        run = Run(self, chat, route, stream_id, conversation_id, resumable)
        self.runs[run.key] = run
        if conversation_id is not None:
            self.busy_conversations.add(conversation_id)
        try:
            messages, run.turn = await self._prompt(chat, conversation_id, route)
            if admit is not None:
                await admit(messages)
        except BaseException:
            self._forget(run)
            raise
        call = ChatCall(route.upstream_model, messages, chat.params)
        if self.tracing:
            call.trace = start_trace(chat.traceparent or INCOMING.get())
        start_fields: dict[str, Any] = {
            "model": route.model,
            "provider": route.provider.name,
            "simulated": route.provider.simulated,
            "conversation_id": public_id,
            "resumable": resumable,
        }
        loop = asyncio.get_running_loop()
        run.task = loop.create_task(run.run(call, start_fields))
        if self._watchdog is None and self.read_timeout > 0:
            self._watchdog = loop.create_task(self._watch_reads(), name="tokenwire-read-watchdog")
        return run

    async def _watch_reads(self) -> None:
        """Fail generations whose provider sent nothing for ``read_timeout`` seconds.

        One task for all of them, instead of the HTTP client's timer per read (a
        ``call_later`` and a ``cancel`` per token). A run paused by its client, or
        waiting for a slow client, has no read outstanding and is left alone.
        """
        limit = self.read_timeout
        tick = max(0.05, min(limit / 8, 5.0))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            try:
                self._check_reads(now, limit)
            except Exception:  # never let the watchdog die
                log.exception("read watchdog failed")

    def _check_reads(self, now: float, limit: float) -> None:
        for run in list(self.runs.values()):
            reads = run.reads
            if reads != run.watch[0]:
                run.watch = (reads, now)
            elif reads & 1 and now - run.watch[1] >= limit and not run.gen.ended:
                run.cancel(READ_TIMEOUT)

    async def _prompt(
        self, chat: Chat, conversation_id: str | None, route: Route | None = None
    ) -> tuple[list[dict[str, Any]], tuple[list[dict[str, Any]], str | None] | None]:
        """The messages to send upstream, and what to store once the reply has ended."""
        new = chat.messages if chat.messages is not None else [{"role": "user", "content": chat.content}]
        if conversation_id is None:
            if chat.system is not None and not any(m.get("role") == "system" for m in new):
                return [{"role": "system", "content": chat.system}, *new], None
            return list(new), None
        stored: int | None = None  # the key's stored conversations, when this one is new
        try:
            past = await self.store.history(conversation_id)
            if not past and self.max_conversations:
                stored = await self.store.count(owner_of(conversation_id), besides=conversation_id)
        except GatewayError:
            raise
        except Exception as exc:
            log.exception("conversation store failed")
            raise GatewayError(
                "internal_error",
                f"the conversation store is unavailable ({type(exc).__name__})",
                retryable=True,
                extra={"id": chat.id},
            ) from None
        if stored is not None and stored >= self.max_conversations:
            # a new stored conversation past the cap is refused: none is ever deleted to make room
            raise GatewayError(
                "too_many_conversations",
                f"{stored} conversations are stored for this key, the most max_conversations_per_key allows "
                f"({self.max_conversations}); delete some (DELETE /v1/conversations/{{id}}), continue one of "
                "them, or send this request without a conversation_id",
                extra={"id": chat.id, "limit": "conversations"},
            )
        system = chat.system
        lead = new[0] if len(new) > 1 else {}
        if system is None and lead.get("role") == "system" and isinstance(lead.get("content"), str) and len(lead) == 2:
            # a leading system message (Chat Completions) is the conversation's system prompt: stored
            # once, as such, so that dropping the oldest turns (StoreCaps) never drops it
            system, new = lead["content"], new[1:]
        if system is not None and past and past[0]["role"] == "system":
            if past[0]["content"] == system:
                system = None  # already stored once; never appended again
        if system is not None:
            past = [m for m in past if m["role"] != "system"]
            past.insert(0, {"role": "system", "content": system})
        window = 0
        info = route.info if route is not None else None
        if info is not None and info.context_window:
            asked = chat.params.get("max_tokens") or chat.params.get("max_completion_tokens") or 0
            window = max(1, info.context_window - int(asked))
        try:
            messages = fit_history(
                past,
                list(new),
                max_messages=self.max_history_messages,
                max_bytes=self.max_history_bytes,
                max_tokens=window,
            )
        except GatewayError as err:
            err.extra.setdefault("id", chat.id)
            raise
        return messages, (list(new), system)

    async def commit_reply(self, run: Run, status: str) -> str | None:
        """Store the turn with its reply, then free the conversation (before ``end`` goes out).

        The user's messages are stored together with the reply, never alone: a turn that
        failed, or produced no text at all, leaves the history as it was, so a client can
        simply send it again (a Retry button) without the question appearing twice. A
        cancelled reply keeps what was sent.

        Returns why the turn could not be stored (a full disk, a store that is down), or None;
        ``store_error`` then says the store is degraded until a later turn is stored.
        """
        conv = run.conversation_id
        if conv is None:
            return None
        answer = run.gen.answer
        try:
            # any output counts (a reply of tool calls or reasoning only keeps the question)
            if status != FAILED and run.gen.seq > 0 and run.turn is not None:
                new, system = run.turn
                reply = [{"role": "assistant", "content": answer}] if answer else []
                t0 = time.monotonic()
                try:
                    await self.store.append(conv, [*new, *reply], system=system)
                finally:
                    if self.on_store_write is not None:
                        self.on_store_write(time.monotonic() - t0)
                self.store_error = None
        except Exception as exc:
            log.error("could not store the reply of %s: %s: %s", run.gen.stream_id, type(exc).__name__, exc)
            why = exc.message if isinstance(exc, GatewayError) else f"{type(exc).__name__}: {exc}"
            self.store_error = why
            self.stats["unstored_turns"] += 1
            return f"this turn could not be stored in the conversation ({why[:200]})"
        finally:
            self.busy_conversations.discard(conv)
        return None

    async def finished(self, run: Run) -> None:
        summary = run.summary
        if summary is not None:
            for hook in self.on_finish:
                try:
                    await hook(summary)
                except Exception:
                    log.exception("on_finish hook failed")
        if run.resumable and self.retention > 0:
            run._expiry = asyncio.get_running_loop().call_later(self.retention, self._forget, run)
        else:
            self._forget(run)

    def _forget(self, run: Run) -> None:
        if self.runs.get(run.key) is run:
            del self.runs[run.key]
        if run.conversation_id is not None and not run.ended.is_set():
            self.busy_conversations.discard(run.conversation_id)

    def watch_detached(self, run: Run) -> None:
        """A resumable run with nobody watching is cancelled after the retention window."""

        def check() -> None:
            if not run.subs and not run.gen.ended:
                run.cancel("abandoned")

        asyncio.get_running_loop().call_later(self.retention, check)

    def get(self, stream_id: str, principal: Any = None) -> Run | None:
        """``principal``'s generation ``stream_id`` (or an open-mode one, which anyone may follow)."""
        run = self.runs.get(stream_key(stream_id, principal))
        if run is None and getattr(principal, "key_id", None):
            run = self.runs.get(stream_id)  # started before keys existed
        return run

    async def shutdown(self, deadline: float) -> None:
        """Let generations finish until ``deadline`` seconds, then cancel the rest."""
        live = [r for r in self.runs.values() if r.task is not None and not r.task.done()]
        if live and deadline > 0:
            await asyncio.wait([r.task for r in live if r.task], timeout=deadline)
        for run in list(self.runs.values()):
            run.cancel("shutdown")
            if run._expiry is not None:
                run._expiry.cancel()
        tasks = [r.task for r in self.runs.values() if r.task is not None and not r.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
