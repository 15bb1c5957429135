"""The last generations of this process, for the admin dashboard's live view and detail pages.

An ``on_finish`` hook (once per generation, never per token) keeps, bounded:

- the detail of the last :attr:`Recent.keep` generations, by stream id (``/admin/api/generations/{id}``);
- the ends of the last :attr:`Recent.window` seconds, as one :class:`Tally` per second and model
  (counts, and histograms of TTFT and duration in 2 % buckets) plus their running sum, from which
  :meth:`Recent.snapshot` computes TTFT p50/p99 and per-model latency: a snapshot costs the same
  at any rate (a list of every end cost 36 ms at 20,000 of them, once a second per dashboard,
  on the event loop that relays the tokens);
- errors by provider and code since start.

Under ``serve --workers N`` each worker has its own: :meth:`Recent.export` hands its tallies
to the worker answering an admin, which adds them up (:func:`merge_exports`) and makes one view
of them (:func:`live_view`, what :meth:`Recent.snapshot` makes of one process's).

Nothing here does I/O or reads a clock of its own: the caller passes ``now``, so the unit
tests drive it with made-up summaries and times.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any

from ..protocol.errors import GatewayError
from .summary import RunSummary

__all__ = ["Recent", "Tally", "detail", "hist_percentile", "live_view", "merge_exports"]


def _owner(summary: RunSummary) -> dict[str, Any] | None:
    owner = summary.owner
    record = getattr(owner, "record", None)
    if record is not None:
        return {"id": record.id, "name": record.name, "key": record.shown + "…"}
    label = getattr(owner, "label", None)
    return {"label": label} if label else None


def _attempts(summary: RunSummary, started_ns: int) -> list[dict[str, Any]] | None:
    """The upstream attempts as timeline entries, when the summary carries them.

    Read by name (``summary.attempts``: objects with ``provider``, ``model``, ``start_ns``,
    ``end_ns``, ``error``; ``summary.started_ns``), so that a summary without them (an older
    relay) still gives a timeline, with one "upstream request" entry instead.
    """
    attempts = getattr(summary, "attempts", None)
    if not attempts or not started_ns:
        return None
    out = []
    for i, a in enumerate(attempts, 1):
        start, end = getattr(a, "start_ns", 0), getattr(a, "end_ns", 0)
        entry: dict[str, Any] = {
            "at_ms": round((start - started_ns) / 1e6, 2),
            "event": f"upstream attempt {i}",
            "provider": getattr(a, "provider", None),
            "model": getattr(a, "model", None),
        }
        if end:
            entry["took_ms"] = round((end - start) / 1e6, 2)
        err = getattr(a, "error", None)
        entry["outcome"] = err.code if isinstance(err, GatewayError) else "answered"
        out.append(entry)
    return out


def detail(summary: RunSummary, ended: float) -> dict[str, Any]:
    """One generation as the admin API shows it: what it asked, who answered, a timeline, cost.

    The timeline's times are milliseconds from the request. Upstream attempts are listed one by
    one when the summary carries them (retries and fallbacks, see :func:`_attempts`); otherwise
    one "upstream request" with the number of attempts a failure reported. Gaps between tokens:
    the run's longest (``max_gap_s``, measured per upstream read) when the summary has it, and
    the mean from ``timing.tokens_per_s``; the relay never times tokens one by one.
    """
    timing = summary.timing
    total = timing.get("total_ms") or 0.0
    ttft = timing.get("ttft_ms")
    tps = timing.get("tokens_per_s")
    chat = summary.chat
    started_ns = getattr(summary, "started_ns", 0) or 0
    started = started_ns / 1e9 if started_ns else ended - total / 1000
    timeline: list[dict[str, Any]] = [{"at_ms": 0.0, "event": "request", "model": chat.model or summary.model}]
    error = summary.error
    attempts = _attempts(summary, started_ns)
    if attempts is not None:
        timeline += attempts
    else:
        n = error.extra.get("attempts") if error is not None else None
        timeline.append(
            {
                "at_ms": 0.0,
                "event": "upstream request",
                "provider": summary.provider,
                "model": summary.upstream_model or summary.model,
                **({"attempts": n} if n else {}),
            }
        )
    if ttft is not None:
        timeline.append({"at_ms": ttft, "event": "first token"})
    end: dict[str, Any] = {"at_ms": total, "event": summary.status, "finish_reason": summary.finish_reason}
    if summary.reason:
        end["reason"] = summary.reason
    if error is not None:
        end["error"] = error.code
    timeline.append(end)
    timeline.sort(key=lambda e: e.get("at_ms", 0.0))
    max_gap = getattr(summary, "max_gap_s", None)
    out: dict[str, Any] = {
        "stream_id": summary.stream_id,
        "status": summary.status,
        "finish_reason": summary.finish_reason,
        "requested_model": chat.model,
        "model": summary.model,
        "provider": summary.provider,
        "upstream_model": summary.upstream_model,
        "key": _owner(summary),
        "started": round(started, 3),
        "ended": round(ended, 3),
        "tokens": summary.tokens,
        "usage": summary.usage,
        "usage_estimated": summary.usage_estimated,
        "timing": timing,
        "mean_gap_ms": round(1000 / tps, 2) if tps else None,
        "max_gap_ms": round(max_gap * 1000, 2) if max_gap is not None else None,
        "cost_usd": summary.cost_usd,
        "resumable": summary.resumable,
        "timeline": timeline,
    }
    if summary.reason:
        out["reason"] = summary.reason
    if error is not None:
        out["error"] = {
            "code": error.code,
            "message": error.message[:500],
            "retryable": error.retryable,
            "upstream_status": error.status,
        }
    if summary.store_error:
        out["store_error"] = summary.store_error[:300]
    return out


#: latencies are counted in log-spaced buckets 2 % wide: a percentile is its bucket's middle, within 1 %
_STEP = math.log(1.02)
_ZERO = -(10**6)  #: the bucket of 0 ms (and of anything below 1 µs)


def _bucket(ms: float) -> int:
    return math.floor(math.log(ms) / _STEP) if ms >= 0.001 else _ZERO


def _middle(bucket: int) -> float:
    return 0.0 if bucket == _ZERO else round(math.exp((bucket + 0.5) * _STEP), 3)


def hist_add(into: dict[int, int], other: dict[int, int], sign: int = 1) -> None:
    """Add (``sign`` -1: take away) one bucket histogram to another; empty buckets are dropped."""
    for b, c in other.items():
        v = into.get(b, 0) + sign * c
        if v:
            into[b] = v
        else:
            into.pop(b, None)


def hist_percentile(hist: dict[int, int], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (ms) of a bucket histogram; None when it is empty."""
    n = sum(hist.values())
    if not n:
        return None
    rank = max(1, math.ceil(q / 100 * n))
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return _middle(b)
    return None  # pragma: no cover (seen reaches n)


class Tally:
    """The ends of some generations of one model and provider: how many, failed, tokens, and
    histograms of their TTFT and total time (only ended generations with a TTFT have one)."""

    __slots__ = ("failed", "n", "tokens", "total", "ttft")

    def __init__(self) -> None:
        self.n = 0
        self.failed = 0
        self.tokens = 0
        self.ttft: dict[int, int] = {}
        self.total: dict[int, int] = {}

    def count(self, ttft: float | None, total: float, tokens: int, failed: bool) -> None:
        self.n += 1
        self.failed += failed
        self.tokens += tokens
        if ttft is not None:
            b = _bucket(ttft)
            self.ttft[b] = self.ttft.get(b, 0) + 1
        b = _bucket(total)
        self.total[b] = self.total.get(b, 0) + 1

    def add(self, other: Tally, sign: int = 1) -> None:
        self.n += sign * other.n
        self.failed += sign * other.failed
        self.tokens += sign * other.tokens
        hist_add(self.ttft, other.ttft, sign)
        hist_add(self.total, other.total, sign)

    def to_json(self) -> list[Any]:
        return [self.n, self.failed, self.tokens, list(self.ttft.items()), list(self.total.items())]

    @classmethod
    def from_json(cls, fields: list[Any]) -> Tally:
        t = cls()
        t.n, t.failed, t.tokens = int(fields[0]), int(fields[1]), int(fields[2])
        t.ttft = {int(b): int(c) for b, c in fields[3]}
        t.total = {int(b): int(c) for b, c in fields[4]}
        return t


class Recent:
    """The last generations of one process (bounded: ``keep`` details, ``window`` seconds of ends)."""

    def __init__(self, keep: int = 500, window: float = 60.0) -> None:
        self.keep = keep
        self.window = window
        self.details: OrderedDict[str, dict[str, Any]] = OrderedDict()
        #: the ends of each second (its whole number) of the last ``window`` seconds, per model and provider
        self.slots: dict[int, dict[tuple[str, str], Tally]] = {}
        #: the sum of ``slots``: what a snapshot reads (kept up to date, so it costs the same at any rate)
        self.totals: dict[tuple[str, str], Tally] = {}
        self.errors: dict[tuple[str, str, str], int] = {}  #: (provider, code, upstream status) -> n
        self.finished = 0
        self.clock = time.time  #: where :meth:`on_finish` reads the end time (tests replace it)

    async def on_finish(self, summary: RunSummary) -> None:
        """Registry hook: remember one ended generation."""
        self.add(summary, self.clock())

    def add(self, summary: RunSummary, ended: float) -> None:
        self.finished += 1
        d = detail(summary, ended)
        self.details[summary.stream_id] = d
        self.details.move_to_end(summary.stream_id)
        while len(self.details) > self.keep:
            self.details.popitem(last=False)
        timing = summary.timing
        key = (summary.model, summary.provider)
        slot = self.slots.get(second := math.floor(ended))
        if slot is None:
            slot = self.slots[second] = {}
        ttft, total = timing.get("ttft_ms"), timing.get("total_ms") or 0.0
        failed = summary.status == "failed"
        for tallies in (slot, self.totals):
            tally = tallies.get(key)
            if tally is None:
                tally = tallies[key] = Tally()
            tally.count(ttft, total, summary.tokens, failed)
        if summary.status == "failed":
            err = summary.error
            status = err.status if err is not None else None
            k = (summary.provider, err.code if err is not None else "unknown", "" if status is None else str(status))
            self.errors[k] = self.errors.get(k, 0) + 1

    def get(self, stream_id: str) -> dict[str, Any] | None:
        return self.details.get(stream_id)

    def latest(self, n: int) -> list[dict[str, Any]]:
        """The last ``n`` generations, newest first, in brief."""
        out = []
        for d in reversed(self.details.values()):
            if len(out) >= n:
                break
            out.append(
                {k: d[k] for k in ("stream_id", "status", "model", "provider", "key", "tokens", "cost_usd", "ended")}
                | {"ttft_ms": d["timing"].get("ttft_ms"), "total_ms": d["timing"].get("total_ms")}
            )
        return out

    def _prune(self, now: float) -> None:
        """Forget the seconds that have left the window (at most ``window`` + 1 of them are kept)."""
        for second in [t for t in self.slots if t < now - self.window]:
            for key, tally in self.slots.pop(second).items():
                total = self.totals[key]
                total.add(tally, -1)
                if not total.n:
                    del self.totals[key]

    def snapshot(
        self,
        now: float,
        in_flight: dict[str, int],
        tokens_total: int,
        prev: tuple[float, int] | None,
        sockets: int = 0,
    ) -> dict[str, Any]:
        """The live view at ``now``: streams in flight (per model), tokens/s since ``prev`` (the
        previous snapshot's ``(now, tokens_total)``), TTFT p50/p99 and per-model latency over the
        last ``window`` seconds, errors by provider and code."""
        self._prune(now)
        return live_view(
            now, self.window, self.totals, self.errors, self.finished, in_flight, tokens_total, prev, sockets
        )

    def export(self, now: float, latest: int = 20) -> dict[str, Any]:
        """This process's figures, for another worker to add up with its own (:func:`merge_exports`).

        Tallies, not percentiles: several workers' percentiles do not make the whole's, their
        histograms do (and they are as small at 10,000 generations a second as at one).
        """
        self._prune(now)
        return {
            "models": [[model, provider, *tally.to_json()] for (model, provider), tally in self.totals.items()],
            "errors": [[p, c, s, n] for (p, c, s), n in self.errors.items()],
            "finished": self.finished,
            "latest": self.latest(latest),
        }


def merge_exports(parts: list[dict[str, Any]], latest: int = 20) -> dict[str, Any]:
    """Several processes' :meth:`Recent.export` as one: tallies and counts added up, the ``latest``
    newest generations of all of them."""
    models: dict[tuple[str, str], Tally] = {}
    for part in parts:
        for model, provider, *fields in part["models"]:
            tally = models.get((model, provider))
            if tally is None:
                tally = models[(model, provider)] = Tally()
            tally.add(Tally.from_json(fields))
    errors: dict[tuple[str, str, str], int] = {}
    for part in parts:
        for p, c, s, n in part["errors"]:
            errors[(p, c, s)] = errors.get((p, c, s), 0) + n
    newest = sorted((g for part in parts for g in part["latest"]), key=lambda g: g.get("ended") or 0, reverse=True)
    return {
        "models": models,
        "errors": errors,
        "finished": sum(part["finished"] for part in parts),
        "latest": newest[:latest],
    }


def live_view(
    now: float,
    window: float,
    models: dict[tuple[str, str], Tally],
    errors: dict[tuple[str, str, str], int],
    finished: int,
    in_flight: dict[str, int],
    tokens_total: int,
    prev: tuple[float, int] | None,
    sockets: int = 0,
) -> dict[str, Any]:
    """The live view (see :meth:`Recent.snapshot`) from the window's tallies per model and provider:
    one process's, or several added up (:func:`merge_exports`)."""
    rate = None
    if prev is not None and now > prev[0]:
        rate = round(max(0, tokens_total - prev[1]) / (now - prev[0]), 1)
    ttfts: dict[int, int] = {}
    for tally in models.values():
        hist_add(ttfts, tally.ttft)
    rows = [
        {
            "model": model,
            "provider": provider,
            "generations": t.n,
            "failed": t.failed,
            "tokens": t.tokens,
            "ttft_p50_ms": hist_percentile(t.ttft, 50),
            "ttft_p99_ms": hist_percentile(t.ttft, 99),
            "total_p50_ms": hist_percentile(t.total, 50),
            "total_p99_ms": hist_percentile(t.total, 99),
        }
        for (model, provider), t in sorted(models.items())
    ]
    return {
        "t": round(now, 3),
        "window_s": window,
        "in_flight": sum(in_flight.values()),
        "in_flight_by_model": in_flight,
        "sockets": sockets,
        "tokens_total": tokens_total,
        "tokens_per_s": rate,
        "ttft_p50_ms": hist_percentile(ttfts, 50),
        "ttft_p99_ms": hist_percentile(ttfts, 99),
        "ended_in_window": sum(t.n for t in models.values()),
        "failed_in_window": sum(t.failed for t in models.values()),
        "generations_total": finished,
        "errors": [
            {"provider": p, "code": c, "upstream_status": int(s) if s else None, "count": n}
            for (p, c, s), n in sorted(errors.items(), key=lambda kv: -kv[1])
        ],
        "models": rows,
    }
