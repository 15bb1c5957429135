"""Metrics (Prometheus text at ``GET /metrics``) and structured JSON-line logs.

Nothing here runs per token. A generation is counted once, when it ends, from
its own ``end`` event (the relay already computed timing, usage and cost for the
client); gauges (open sockets, generations in flight, memory) are read at scrape
time. The only hot-path work elsewhere is a plain integer ``+= 1`` per socket,
rejection or client error.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from bisect import bisect_left
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import orjson

from .. import procstat
from ..version import __version__

if TYPE_CHECKING:
    from .relay import Registry
    from .summary import RunSummary

__all__ = ["TTFT_BUCKETS", "Metrics", "merge_expositions", "setup_event_log", "write_event"]

#: Seconds. Fine at the low end: the gateway's own share of TTFT is sub-millisecond.
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

events_log = logging.getLogger("tokenwire.events")


class _Histogram:
    """Cumulative counts are computed at scrape time; observing is one bisect and two adds."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


class _ModelStats:
    """Everything counted per (model, provider)."""

    __slots__ = ("completion_tokens", "cost", "duration", "prompt_tokens", "status", "tokens", "ttft")

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.tokens = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.ttft = _Histogram(TTFT_BUCKETS)
        self.duration = _Histogram(DURATION_BUCKETS)


class Metrics:
    """Process-wide counters. Other layers increment the public ints/dicts directly."""

    def __init__(self, registry: Registry, sessions: Collection[Any]) -> None:
        self.registry = registry
        self.sessions = sessions  #: the open client sockets (counted at scrape time)
        self.started = time.time()
        self.ws_connections = 0  #: WebSocket connections ever accepted
        self.rejections: dict[str, int] = {}  #: limit refusals by reason (see :meth:`reject`)
        self.client_errors: dict[str, int] = {}  #: error events sent to clients, by code
        self.upstream_errors: dict[tuple[str, str, str], int] = {}  #: (provider, code, http status) -> n
        self.cancellations: dict[str, int] = {}  #: cancelled generations by reason
        self.http: dict[tuple[str, str, int], int] = {}  #: (method, route, status) -> requests
        self.models: dict[tuple[str, str], _ModelStats] = {}
        self.log_generations = True
        self.log_prompts = False

    # -- counting (cheap, called off the token path) ---------------------------
    def reject(self, reason: str) -> None:
        """A request refused by a limit (per-socket generations, a key's rate, a quota…)."""
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def client_error(self, code: str) -> None:
        self.client_errors[code] = self.client_errors.get(code, 0) + 1

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

    # -- exposition -------------------------------------------------------------
    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        out: list[str] = []

        def family(name: str, kind: str, help: str) -> None:
            out.append(f"# HELP {name} {help}")
            out.append(f"# TYPE {name} {kind}")

        def sample(name: str, value: float, labels: dict[str, str] | None = None) -> None:
            out.append(f"{name}{_labels(labels)} {_num(value)}")

        family("tokenwire_build_info", "gauge", "Version of this gateway.")
        sample("tokenwire_build_info", 1, {"version": __version__})
        family("tokenwire_open_sockets", "gauge", "WebSocket connections open now.")
        sample("tokenwire_open_sockets", len(self.sessions))
        family("tokenwire_ws_connections_total", "counter", "WebSocket connections accepted.")
        sample("tokenwire_ws_connections_total", self.ws_connections)
        runs = self.registry.runs.values()
        family("tokenwire_generations_in_flight", "gauge", "Generations running now.")
        sample("tokenwire_generations_in_flight", sum(1 for r in runs if not r.gen.ended))
        family("tokenwire_generations_retained", "gauge", "Ended generations kept for resume.")
        sample("tokenwire_generations_retained", sum(1 for r in runs if r.gen.ended))

        models = sorted(self.models.items())
        family("tokenwire_generations_total", "counter", "Ended generations by status.")
        for (model, provider), st in models:
            for status, n in sorted(st.status.items()):
                sample("tokenwire_generations_total", n, {"model": model, "provider": provider, "status": status})
        family("tokenwire_tokens_relayed_total", "counter", "Answer tokens relayed to clients (token events).")
        for (model, provider), st in models:
            sample("tokenwire_tokens_relayed_total", st.tokens, {"model": model, "provider": provider})
        family("tokenwire_usage_tokens_total", "counter", "Tokens billed, as the provider reported them.")
        for (model, provider), st in models:
            for kind, n in (("prompt", st.prompt_tokens), ("completion", st.completion_tokens)):
                sample("tokenwire_usage_tokens_total", n, {"model": model, "provider": provider, "kind": kind})
        family("tokenwire_cost_usd_total", "counter", "Cost of the generations at catalog prices, in USD.")
        for (model, provider), st in models:
            sample("tokenwire_cost_usd_total", st.cost, {"model": model, "provider": provider})
        family("tokenwire_ttft_seconds", "histogram", "Time from request to first token, per model and provider.")
        for (model, provider), st in models:
            _histogram(out, "tokenwire_ttft_seconds", st.ttft, {"model": model, "provider": provider})
        family("tokenwire_generation_seconds", "histogram", "Duration of whole generations.")
        for (model, provider), st in models:
            _histogram(out, "tokenwire_generation_seconds", st.duration, {"model": model, "provider": provider})

        family("tokenwire_upstream_errors_total", "counter", "Generations failed, by provider and error code.")
        for (provider, code, status), n in sorted(self.upstream_errors.items()):
            labels = {"provider": provider, "code": code}
            if status:
                labels["upstream_status"] = status
            sample("tokenwire_upstream_errors_total", n, labels)
        family("tokenwire_cancellations_total", "counter", "Generations cancelled, by reason.")
        for reason, n in sorted(self.cancellations.items()):
            sample("tokenwire_cancellations_total", n, {"reason": reason})
        family("tokenwire_limit_rejections_total", "counter", "Requests refused by a limit, by reason.")
        for reason, n in sorted(self.rejections.items()):
            sample("tokenwire_limit_rejections_total", n, {"reason": reason})
        family("tokenwire_client_errors_total", "counter", "Error events sent on sockets outside generations.")
        for code, n in sorted(self.client_errors.items()):
            sample("tokenwire_client_errors_total", n, {"code": code})
        family("tokenwire_resumes_total", "counter", "Successful attaches after a reconnect.")
        sample("tokenwire_resumes_total", self.registry.stats.get("resumes", 0))
        family("tokenwire_reconnects_total", "counter", "Attach requests after a reconnect (resumed or expired).")
        reconnects = self.registry.stats.get("resumes", 0) + self.client_errors.get("stream_expired", 0)
        sample("tokenwire_reconnects_total", reconnects)

        family("tokenwire_http_requests_total", "counter", "HTTP requests (WebSocket upgrades included) by route.")
        for (method, route, status), n in sorted(self.http.items()):
            sample("tokenwire_http_requests_total", n, {"method": method, "route": route, "status": str(status)})

        try:
            rss, cpu = procstat.usage(os.getpid())
        except OSError:  # no /proc (not Linux)
            rss, cpu = 0, 0.0
        family("process_resident_memory_bytes", "gauge", "Resident memory of the gateway process.")
        sample("process_resident_memory_bytes", rss)
        family("process_cpu_seconds_total", "counter", "CPU time (user + system) of the gateway process.")
        sample("process_cpu_seconds_total", cpu)
        family("process_start_time_seconds", "gauge", "Start of the gateway, Unix time.")
        sample("process_start_time_seconds", self.started)
        return "\n".join(out) + "\n"


def _histogram(out: list[str], name: str, h: _Histogram, labels: dict[str, str]) -> None:
    running = 0
    for bound, n in zip(h.bounds, h.counts, strict=False):
        running += n
        out.append(f"{name}_bucket{_labels({**labels, 'le': _num(bound)})} {running}")
    out.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {h.count}")
    out.append(f"{name}_sum{_labels(labels)} {_num(h.total)}")
    out.append(f"{name}_count{_labels(labels)} {h.count}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str] | None) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else str(int(value)) + ".0"


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
    """The process's log: JSON lines on stderr, one per record, in one format with the event log."""
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
def merge_expositions(texts: list[str]) -> str:
    """One Prometheus exposition from several processes' (``serve --workers``).

    Samples with the same name and labels are added up (counters, gauges such as open
    sockets, histogram buckets, sums and counts); ``*_info`` families take the largest
    value and ``process_start_time_seconds`` the earliest. Families and samples keep the
    order in which they first appear.
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
            elif family.endswith("_info"):
                samples[key] = max(samples[key], number)
            elif family == "process_start_time_seconds":
                samples[key] = min(samples[key], number)
            else:
                samples[key] += number
    out: list[str] = []
    for head, samples in families.values():
        out += head
        out += [f"{key} {_num(int(v) if v.is_integer() and abs(v) < 1e15 else v)}" for key, v in samples.items()]
    return "\n".join(out) + "\n"
