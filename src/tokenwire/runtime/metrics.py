"""Metrics (Prometheus text at ``GET /metrics``) and structured JSON-line logs.

Nothing here runs per token. A generation is counted once, when it ends, from
its own summary (the relay already computed timing, usage, cost and its longest
pause between tokens); gauges (open sockets and SSE responses, generations in
flight, bytes waiting in send buffers) are read at scrape time from the live
objects. The only other work is a plain integer ``+= 1`` per socket, rejection,
client error or cut-off, one histogram observation per Redis call and per stored
turn, one timer per process that measures the event loop's lag, and a timing of each
garbage-collector pass.

**Why the counting is plain Python and the page is ``prometheus_client``'s.** The
figures live in plain ints, dicts and :class:`_Histogram` (one bisect and two adds
to observe, no lock: the gateway is one thread); they are also the read side other
code uses (``/healthz``, an admin view; see :class:`Metrics`). At scrape time a
custom collector (:class:`_Collector`, the library's documented pattern for
figures kept elsewhere) turns them into metric families, ``prometheus_client``'s
``ProcessCollector`` adds the ``process_*`` families (RSS, CPU, start time, file
descriptors), and ``generate_latest`` writes the text: names, label escaping and
number formats are the library's, so a real Prometheus parses what it parses.

**Several workers** (``serve --workers N``) keep one registry each; the worker that
a scrape reaches asks its siblings for their own page over their private Unix
sockets and :func:`merge_expositions` adds them up (server/metrics_http.py). Not the
library's multiprocess mode: that mode cannot run custom collectors nor the
process collector for other processes, so every scrape-time gauge read from live
objects (sockets, SSE responses, buffers) and every process figure would show
only the worker that answered; each increment would also write to an mmap'd file.
The price of the merge is that a worker that restarts starts from zero (its
counters leave the sum; Prometheus's ``rate`` treats the drop as a reset), and a
worker that does not answer within 2 s is missing from that one scrape.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..version import __version__

if TYPE_CHECKING:
    from .relay import Registry
    from .summary import RunSummary

__all__ = [
    "DURATION_BUCKETS",
    "GAP_BUCKETS",
    "LAG_BUCKETS",
    "MAX_FAMILIES",
    "REDIS_BUCKETS",
    "STORE_BUCKETS",
    "TTFT_BUCKETS",
    "ConnectionStats",
    "Metrics",
    "merge_expositions",
    "setup_event_log",
    "write_event",
]

#: Seconds. Fine at the low end: the gateway's own share of TTFT is sub-millisecond.
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: the longest pause between two tokens of one generation, sampled every LAG_INTERVAL: 0 (none seen) lands in
#: the first bucket; a paced provider's 10-50 ms gaps are below the resolution, a stall is not
GAP_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: one pass of the cyclic garbage collector (young passes take ~0.1-5 ms; a full one ~100 ms per 200,000 objects)
GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: how late the loop ran a timer: uvloop's timers have millisecond resolution, so the first bucket is 1 ms
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: one Redis call (a local Redis answers in 0.1-0.5 ms; a call fails after ~2 x redis_timeout)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: one turn written to the conversation store (SQLite commits, a Redis pipeline)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: seconds between two ticks of the one timer per process: an event-loop lag probe and a token-gap sample
LAG_INTERVAL = 0.25

events_log = logging.getLogger("tokenwire.events")


class _Histogram:
    """Cumulative counts are computed at scrape time; observing is one bisect and two adds."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  #: per bucket, not cumulative; the last is above every bound
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (0..1), None when empty (for live views)."""
        if not self.count:
            return None
        rank = q * self.count
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            if running >= rank:
                return bound
        return float("inf")


class _ModelStats:
    """Everything counted per (model, provider)."""

    __slots__ = ("completion_tokens", "cost", "duration", "gap", "prompt_tokens", "status", "tokens", "ttft")

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.tokens = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.ttft = _Histogram(TTFT_BUCKETS)
        self.duration = _Histogram(DURATION_BUCKETS)
        self.gap = _Histogram(GAP_BUCKETS)  #: each generation's longest pause between two tokens


class ConnectionStats:
    """The client connections open now, read at scrape time (see :attr:`Metrics.connections`)."""

    __slots__ = ("buffered", "open")

    def __init__(self) -> None:
        #: transport ("ws", "sse") -> bytes each open connection has waiting in its send buffer
        self.buffered: dict[str, list[int]] = {"ws": [], "sse": []}
        #: transport -> connections open (an SSE response counts while its generation runs)
        self.open: dict[str, int] = {"ws": 0, "sse": 0}


class Metrics:
    """Process-wide figures: what ``/metrics`` shows, and the read side for live views.

    Counting (other layers do it directly, never per token): ``ws_connections``,
    ``slow_consumer_cutoffs`` (``+= 1``), :meth:`reject`, :meth:`client_error`,
    :meth:`on_finish` (a Registry hook), and the observers wired by
    :meth:`watch_redis` / :meth:`watch_store`.

    Reading (plain data, safe to read at any time on the event loop):

    - ``models[(model, provider)]``: ``status`` (ended generations by status), ``tokens``,
      ``prompt_tokens``, ``completion_tokens``, ``cost`` and the histograms ``ttft``,
      ``duration`` and ``gap`` (seconds; ``.count``, ``.total``, ``.quantile(q)``);
    - ``upstream_errors[(provider, code, http status)]``, ``cancellations[reason]``,
      ``rejections[reason]``, ``client_errors[code]``, ``http[(method, route, status)]``;
    - ``loop_lag``, ``store_writes[store]``, ``redis[(client, op)]``: histograms;
    - :meth:`connection_stats` (open sockets and SSE responses, their send buffers),
      :meth:`in_flight` (generations running, retained);
    - :meth:`render`: the whole Prometheus page of this process; :meth:`collect`: the same
      as ``prometheus_client`` metric families.
    """

    def __init__(self, registry: Registry, sessions: Collection[Any]) -> None:
        self.registry = registry
        self.sessions = sessions  #: the open client sockets (counted at scrape time)
        self.started = time.time()
        self.ws_connections = 0  #: WebSocket connections ever accepted
        #: sockets whose reader kept the send buffer full for slow_consumer_timeout (their generations cancelled)
        self.slow_consumer_cutoffs = 0
        self.rejections: dict[str, int] = {}  #: limit refusals by reason (see :meth:`reject`)
        self.client_errors: dict[str, int] = {}  #: error events sent to clients, by code
        self.upstream_errors: dict[tuple[str, str, str], int] = {}  #: (provider, code, http status) -> n
        self.cancellations: dict[str, int] = {}  #: cancelled generations by reason
        self.http: dict[tuple[str, str, int], int] = {}  #: (method, route, status) -> requests
        self.models: dict[tuple[str, str], _ModelStats] = {}
        self.loop_lag = _Histogram(LAG_BUCKETS)  #: how late the event loop ran a timer due every LAG_INTERVAL
        #: generation (0, 1, 2 = full) -> seconds each pass of the cyclic collector stopped the process
        self.gc_pauses = {g: _Histogram(GC_BUCKETS) for g in range(3)}
        self._gc_began = 0.0
        self.store_writes: dict[str, _Histogram] = {}  #: store kind -> seconds to write one turn
        self.redis: dict[tuple[str, str], _Histogram] = {}  #: (client, op) -> seconds per Redis round trip
        #: the server layer's reader of the live client connections (server/metrics_http.py)
        self.connections: Callable[[], ConnectionStats] = self._sockets_only
        self.log_generations = True
        self.log_prompts = False
        self._lag_timer: asyncio.TimerHandle | None = None
        self._lag_due = 0.0
        #: generation in flight -> (its token count, when a tick first saw it, seen unchanged since)
        self._gaps: dict[Any, tuple[int, float, bool]] = {}
        self.prometheus = CollectorRegistry(auto_describe=False)  #: this process's families
        self.prometheus.register(_Collector(self))
        ProcessCollector(registry=self.prometheus)  # process_*: RSS, CPU, start time, fds (from /proc)

    # -- counting (cheap, called off the token path) ---------------------------
    def reject(self, reason: str) -> None:
        """A request refused by a limit (per-socket generations, a key's rate, a quota…)."""
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def client_error(self, code: str) -> None:
        self.client_errors[code] = self.client_errors.get(code, 0) + 1

    def watch_redis(self, link: Any, client: str) -> None:
        """Time every round trip of a ``store.redis.RedisLink`` (``client``: "store", "ledger"…)."""
        if link is None or not hasattr(link, "on_rtt"):
            return
        redis = self.redis

        def observe(op: str, seconds: float) -> None:
            h = redis.get((client, op))
            if h is None:
                h = redis[(client, op)] = _Histogram(REDIS_BUCKETS)
            h.observe(seconds)

        link.on_rtt = observe

    def watch_store(self, registry: Registry) -> None:
        """Time every turn the registry writes to its conversation store."""
        kind = type(registry.store).__name__.removesuffix("ConversationStore").lower() or "store"
        h = self.store_writes.setdefault(kind, _Histogram(STORE_BUCKETS))
        registry.on_store_write = h.observe

    async def on_finish(self, summary: RunSummary) -> None:
        """Registry hook: count one ended generation from its summary (what its ``end`` said)."""
        key = (summary.model, summary.provider)
        stats = self.models.get(key)
        if stats is None:
            stats = self.models[key] = _ModelStats()
        status = summary.status
        stats.status[status] = stats.status.get(status, 0) + 1
        stats.tokens += summary.tokens
        usage = summary.usage
        stats.prompt_tokens += usage.get("prompt_tokens") or 0
        stats.completion_tokens += usage.get("completion_tokens") or 0
        cost = summary.cost_usd
        if cost:
            stats.cost += cost
        timing = summary.timing
        if timing.get("ttft_ms") is not None:
            stats.ttft.observe(timing["ttft_ms"] / 1000.0)
        if timing.get("total_ms") is not None:
            stats.duration.observe(timing["total_ms"] / 1000.0)
        if summary.max_gap_s is not None:
            stats.gap.observe(summary.max_gap_s)
        upstream_status = summary.upstream_status
        error = summary.error
        if status == "failed":
            code = error.code if error is not None else "unknown"
            ekey = (summary.provider, code, "" if upstream_status is None else str(upstream_status))
            self.upstream_errors[ekey] = self.upstream_errors.get(ekey, 0) + 1
        elif status == "cancelled":
            reason = summary.reason or "cancelled"
            self.cancellations[reason] = self.cancellations.get(reason, 0) + 1
        if self.log_generations:
            line: dict[str, Any] = {
                "ts": round(time.time(), 3),
                "event": "generation",
                "stream_id": summary.stream_id,
                "model": summary.model,
                "provider": summary.provider,
                "status": status,
                "finish_reason": summary.finish_reason,
                "tokens": summary.tokens,
                "usage": usage,
                "timing": timing,
                "resumable": summary.resumable,
            }
            if cost is not None:  # none for a model without a price, or a run that failed before any token
                line["cost_usd"] = cost
            if summary.store_error is not None:
                line["stored"] = False
                line["store_error"] = summary.store_error
            if status == "cancelled":
                line["reason"] = summary.reason
            if status == "failed" and error is not None:
                line["error"] = {"code": error.code, "retryable": error.retryable}
                if upstream_status is not None:
                    line["upstream_status"] = upstream_status
            if self.log_prompts:  # debug only: prompts and replies are the users' data
                line["prompt"] = summary.prompt
                line["reply"] = summary.reply
            write_event(line)

    # -- one timer per process: the event loop's lag, the pauses between tokens ---------
    def start(self) -> None:
        """Start the per-process tick on the running loop (at start-up; :meth:`stop` at shutdown).

        **Lag.** A timer is asked for every ``LAG_INTERVAL`` seconds and how late the loop runs
        it is observed: a loop busy with a long callback, a blocking call or plain overload runs
        every socket's work that late too. One ``call_later`` per process, no task.

        **Token gaps.** The same tick samples every generation in flight (:meth:`_sample_gaps`)
        instead of the relay timing each token: a clock read per upstream read was measured at
        ~0.37 µs on the test VM (``time.monotonic`` ~180 ns there), most of the 0.5 µs budget at
        one token per read, and a relay serving 10,000 paced streams would pay it 400,000 times a
        second; the sample costs one look at each running generation four times a second. Its
        resolution is the tick: pauses under ``LAG_INTERVAL`` read as 0, a stall of ``s``
        seconds reads within one tick of ``s``. The client's own pause is not counted.
        """
        if self._lag_timer is not None:
            return
        gc.callbacks.append(self._on_gc)
        self._lag_due = time.monotonic() + LAG_INTERVAL
        self._lag_timer = asyncio.get_running_loop().call_later(LAG_INTERVAL, self._lag_tick)

    def _lag_tick(self) -> None:
        # time.monotonic, not loop.time(): uvloop's loop time is cached at millisecond steps
        now = time.monotonic()
        self.loop_lag.observe(max(0.0, now - self._lag_due))
        self._lag_due = now + LAG_INTERVAL
        self._lag_timer = asyncio.get_running_loop().call_later(LAG_INTERVAL, self._lag_tick)
        try:
            self._sample_gaps(now)
        except Exception:  # never let the tick die
            logging.getLogger("tokenwire").exception("token-gap sample failed")

    def _sample_gaps(self, now: float) -> None:
        """Each running generation's longest pause so far, into ``Run.max_gap`` (its summary carries it).

        A token count first seen at tick ``t0``, seen again unchanged at a later tick, and changed at
        tick ``t1``: the generation was silent for about ``t1 - t0`` (within one tick). A count that
        changes at every tick is a moving stream (no gap recorded). Before the first token (that is
        TTFT) and while the client has paused the generation, nothing counts.
        """
        before = self._gaps
        seen: dict[Any, tuple[int, float, bool]] = {}
        for run in self.registry.runs.values():
            gen = run.gen
            if gen.ended:
                continue
            n = gen.token_count
            last = before.get(run)
            if last is None or not n or not run.gate.is_set():
                seen[run] = (n, now, False)
            elif n != last[0]:
                if last[2] and now - last[1] > run.max_gap:  # it had stood still at some tick
                    run.max_gap = now - last[1]
                seen[run] = (n, now, False)
            else:
                seen[run] = (n, last[1], True)
        self._gaps = seen

    def stop(self) -> None:
        if self._lag_timer is not None:
            self._lag_timer.cancel()
            self._lag_timer = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        """Each pass of the cyclic collector, timed: the whole process stands still meanwhile.

        A full pass walks every tracked object (~200 per open socket), so its pause grows with
        the sockets a process holds; the ``gc_policy`` setting (server/heap.py) makes it rare.
        A few dozen passes a second under load, never per token.
        """
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self.gc_pauses[info["generation"]].observe(time.perf_counter() - self._gc_began)

    # -- reading ----------------------------------------------------------------
    def _sockets_only(self) -> ConnectionStats:
        """Without the server layer's reader: the sockets' count, no buffers."""
        stats = ConnectionStats()
        stats.open["ws"] = len(self.sessions)
        return stats

    def connection_stats(self) -> ConnectionStats:
        return self.connections()

    def in_flight(self) -> tuple[int, int]:
        """(generations running, ended generations retained for resume) in this process."""
        running = retained = 0
        for run in self.registry.runs.values():
            if run.gen.ended:
                retained += 1
            else:
                running += 1
        return running, retained

    def collect(self) -> Iterator[Metric]:
        """This process's metric families (``prometheus_client`` objects), as the page shows them."""
        return self.prometheus.collect()

    def render(self) -> str:
        """This process's Prometheus text exposition (format 0.0.4), by ``prometheus_client``."""
        return generate_latest(self.prometheus).decode()


class _Collector(Collector):
    """The families of one :class:`Metrics`, built at scrape time from its plain figures."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        build = GaugeMetricFamily("tokenwire_build_info", "Version of this gateway.", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        conns = m.connections()
        yield GaugeMetricFamily("tokenwire_open_sockets", "WebSocket connections open now.", value=conns.open["ws"])
        yield CounterMetricFamily(
            "tokenwire_ws_connections_total", "WebSocket connections accepted.", value=m.ws_connections
        )
        yield GaugeMetricFamily(
            "tokenwire_open_sse_responses",
            "SSE responses streaming a generation now (every dialect).",
            value=conns.open["sse"],
        )
        total = GaugeMetricFamily(
            "tokenwire_send_buffer_bytes",
            "Bytes waiting in the send buffers of the open client connections, all of them added up.",
            labels=["transport"],
        )
        top = GaugeMetricFamily(
            "tokenwire_send_buffer_max_bytes",
            "Bytes waiting in the send buffer of the fullest open client connection.",
            labels=["transport"],
        )
        for transport, sizes in sorted(conns.buffered.items()):
            total.add_metric([transport], sum(sizes))
            top.add_metric([transport], max(sizes, default=0))
        yield total
        yield top
        running, retained = m.in_flight()
        yield GaugeMetricFamily("tokenwire_generations_in_flight", "Generations running now.", value=running)
        yield GaugeMetricFamily("tokenwire_generations_retained", "Ended generations kept for resume.", value=retained)

        models = sorted(m.models.items())
        mp = ["model", "provider"]
        fam = CounterMetricFamily("tokenwire_generations_total", "Ended generations by status.", labels=[*mp, "status"])
        for (model, provider), st in models:
            for status, n in sorted(st.status.items()):
                fam.add_metric([model, provider, status], n)
        yield fam
        fam = CounterMetricFamily(
            "tokenwire_tokens_relayed_total", "Answer tokens relayed to clients (token events).", labels=mp
        )
        for (model, provider), st in models:
            fam.add_metric([model, provider], st.tokens)
        yield fam
        fam = CounterMetricFamily(
            "tokenwire_usage_tokens_total", "Tokens billed, as the provider reported them.", labels=[*mp, "kind"]
        )
        for (model, provider), st in models:
            fam.add_metric([model, provider, "prompt"], st.prompt_tokens)
            fam.add_metric([model, provider, "completion"], st.completion_tokens)
        yield fam
        fam = CounterMetricFamily(
            "tokenwire_cost_usd_total", "Cost of the generations at catalog prices, in USD.", labels=mp
        )
        for (model, provider), st in models:
            fam.add_metric([model, provider], st.cost)
        yield fam
        for name, attr, help in (
            ("tokenwire_ttft_seconds", "ttft", "Time from request to first token, per model and provider."),
            ("tokenwire_generation_seconds", "duration", "Duration of whole generations."),
            (
                "tokenwire_token_gap_max_seconds",
                "gap",
                "Longest pause between two tokens reaching the client, one observation per generation of 2+ tokens.",
            ),
        ):
            hist = HistogramMetricFamily(name, help, labels=mp)
            for (model, provider), st in models:
                _add(hist, [model, provider], getattr(st, attr))
            yield hist

        fam = CounterMetricFamily(
            "tokenwire_upstream_errors_total",
            "Generations failed, by provider and error code.",
            labels=["provider", "code", "upstream_status"],
        )
        for (provider, code, status), n in sorted(m.upstream_errors.items()):
            labels = {"provider": provider, "code": code}
            if status:  # no upstream_status label when the provider sent no HTTP status
                labels["upstream_status"] = status
            fam.add_sample("tokenwire_upstream_errors_total", labels, n)
        yield fam
        yield _by("tokenwire_cancellations_total", "Generations cancelled, by reason.", "reason", m.cancellations)
        yield CounterMetricFamily(
            "tokenwire_slow_consumer_cutoffs_total",
            "Sockets cut off for not reading (send buffer full for slow_consumer_timeout); generations cancelled.",
            value=m.slow_consumer_cutoffs,
        )
        yield _by("tokenwire_limit_rejections_total", "Requests refused by a limit, by reason.", "reason", m.rejections)
        help = "Error events sent on sockets outside generations."
        yield _by("tokenwire_client_errors_total", help, "code", m.client_errors)
        resumes = m.registry.stats.get("resumes", 0)
        yield CounterMetricFamily("tokenwire_resumes_total", "Successful attaches after a reconnect.", value=resumes)
        yield CounterMetricFamily(
            "tokenwire_reconnects_total",
            "Attach requests after a reconnect (resumed or expired).",
            value=resumes + m.client_errors.get("stream_expired", 0),
        )
        fam = CounterMetricFamily(
            "tokenwire_http_requests_total",
            "HTTP requests (WebSocket upgrades included) by route.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), n in sorted(m.http.items()):
            fam.add_metric([method, route, str(status)], n)
        yield fam

        hist = HistogramMetricFamily(
            "tokenwire_event_loop_lag_seconds",
            f"How late the event loop ran a timer due every {LAG_INTERVAL:g} s (one probe per process).",
        )
        _add(hist, [], m.loop_lag)
        yield hist
        hist = HistogramMetricFamily(
            "tokenwire_gc_pause_seconds",
            "How long each pass of the cyclic garbage collector stopped the process (generation 2: a full pass).",
            labels=["generation"],
        )
        for generation, h in m.gc_pauses.items():
            _add(hist, [str(generation)], h)
        yield hist
        hist = HistogramMetricFamily(
            "tokenwire_store_write_seconds",
            "Time to write one ended turn to the conversation store.",
            labels=["store"],
        )
        for store, h in sorted(m.store_writes.items()):
            _add(hist, [store], h)
        yield hist
        hist = HistogramMetricFamily(
            "tokenwire_redis_seconds",
            "Redis round trips: one call (op=call) or one batched stream-shipping tick (op=ship).",
            labels=["client", "op"],
        )
        for (client, op), h in sorted(m.redis.items()):
            _add(hist, [client, op], h)
        yield hist


def _by(name: str, help: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    """A counter family with one label, from ``{label value: count}``."""
    fam = CounterMetricFamily(name, help, labels=[label])
    for value, n in sorted(counts.items()):
        fam.add_metric([value], n)
    return fam


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else str(int(value)) + ".0"


def _add(family: HistogramMetricFamily, labels: list[str], h: _Histogram) -> None:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(h.bounds, h.counts, strict=False):
        running += n
        buckets.append((floatToGoString(bound), running))
    buckets.append(("+Inf", h.count))
    family.add_metric(labels, buckets, h.total)


# -- structured logs -------------------------------------------------------------
class JSONLineFormatter(logging.Formatter):
    """Every other log record (auth, Redis, aiohttp…) as the same kind of JSON line as the events:
    ``{"ts", "event": "log", "level", "logger", "message"}``; an exception adds its last line
    (``error``), and its whole traceback only at log level debug."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created, 3),
            "event": "log",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            obj["error"] = f"{type(exc).__name__}: {exc}"
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                obj["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(obj, default=str).decode()


def setup_logging(level: str) -> None:
    """The process's log: JSON lines on stderr, one per record, in one format with the event log.

    Neither format has the caller's file and line, the thread or the process, so a record does not
    collect them (the logging HOWTO's "Optimization"): finding the caller walks the stack for every
    record, and the event log writes one per generation. Only set for tokenwire's own process
    (``tokenwire serve`` and the CLI), never for an application that embeds the client.
    """
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONLineFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def setup_event_log(stream: Any = None) -> None:
    """JSON lines on stderr, one object per line, apart from the human-readable log."""
    if events_log.handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    events_log.addHandler(handler)
    events_log.setLevel(logging.INFO)
    events_log.propagate = False


def write_event(obj: dict[str, Any]) -> None:
    if events_log.isEnabledFor(logging.INFO):
        events_log.info(orjson.dumps(obj, default=str).decode())


# -- several worker processes (serve --workers) ---------------------------------------
#: gauges that are a maximum over something, so a maximum over the workers too (not a sum)
MAX_FAMILIES = frozenset({"tokenwire_send_buffer_max_bytes", "process_max_fds"})


def merge_expositions(texts: list[str]) -> str:
    """One Prometheus exposition from several processes' (``serve --workers``).

    Samples with the same name and labels are added up (counters, gauges such as open
    sockets or resident memory, histogram buckets, sums and counts); ``*_info`` families
    and the maxima in :data:`MAX_FAMILIES` take the largest value,
    ``process_start_time_seconds`` and ``*_created`` the earliest.
    Families and samples keep the order in which they first appear.
    """
    families: dict[str, tuple[list[str], dict[str, float]]] = {}
    for text in texts:
        family = ""
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    head, _ = families.setdefault(family, ([], {}))
                    if line not in head:
                        head.append(line)
                continue
            key, _, value = line.rpartition(" ")
            try:
                number = float(value)
            except ValueError:
                continue
            _, samples = families.setdefault(family, ([], {}))
            if key not in samples:
                samples[key] = number
            elif family.endswith("_info") or family in MAX_FAMILIES:
                samples[key] = max(samples[key], number)
            elif family == "process_start_time_seconds" or family.endswith("_created"):
                samples[key] = min(samples[key], number)
            else:
                samples[key] += number
    out: list[str] = []
    for head, samples in families.values():
        out += head
        out += [f"{key} {_num(int(v) if v.is_integer() and abs(v) < 1e15 else v)}" for key, v in samples.items()]
    return "\n".join(out) + "\n"
