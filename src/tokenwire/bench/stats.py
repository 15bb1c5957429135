"""The load benchmarks' arithmetic: latency histograms, percentiles and stall counting.

Pure (no I/O, no clock), so the figures ``tokenwire loadtest`` and ``tokenwire capacity`` print
can be checked by unit tests. Latencies are kept as ``{bucket: count}`` histograms of
``RES_US``-µs buckets: a client process records 100,000 tokens a second, and a histogram merges
across processes without shipping every sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

__all__ = [
    "RES_US",
    "StreamStalls",
    "added_gap",
    "hist_add",
    "hist_merge",
    "hist_percentile",
    "hist_summary",
    "stall_summary",
]

RES_US = 10  #: histogram resolution, microseconds


def added_gap(latency: float, previous: float) -> float:
    """Seconds the relay added to the gap before a token: a shorter gap (catching up) adds nothing."""
    return max(0.0, latency - previous)


def hist_add(h: MutableMapping[int, int], seconds: float) -> None:
    k = round(seconds * 1e6 / RES_US)
    h[k] = h.get(k, 0) + 1


def hist_percentile(h: Mapping[int, int], q: float) -> float | None:
    """The q-th percentile in ms, nearest rank (the smallest value with at least q % at or below it)."""
    total = sum(h.values())
    if not total:
        return None
    rank = max(1, int(q / 100 * total + 0.999999))
    seen = 0
    for k in sorted(h):
        seen += h[k]
        if seen >= rank:
            return k * RES_US / 1000.0
    return None


def hist_summary(h: Mapping[int, int]) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {"n": sum(h.values())}
    for q in (50, 90, 99, 99.9):
        out[f"p{q:g}"] = hist_percentile(h, q)
    out["max"] = max(h) * RES_US / 1000.0 if h else None
    return out


def hist_merge(into: MutableMapping[int, int], other: Mapping[Any, int]) -> None:
    """Add ``other`` (its keys may be strings: it came through JSON) into ``into``."""
    for k, v in other.items():
        into[int(k)] = into.get(int(k), 0) + v


class StreamStalls:
    """One stream's inter-token gaps as its client saw them, against a stall threshold.

    A *stall* is a gap between two tokens of one reply longer than ``threshold`` seconds
    (Busbar's measure: 10× the pacing interval) that overlaps the measuring window
    ``[w0, w1)``. The gap between two replies (the upstream's own time to first token) is not
    an inter-token gap. A stall where the upstream itself wrote the two tokens that far apart
    is counted as the upstream's too: the load generator, not the gateway, was late."""

    __slots__ = ("max_gap", "prev_recv", "prev_sent", "stalls", "threshold", "tokens", "upstream_stalls", "w0", "w1")

    def __init__(self, threshold: float, w0: float, w1: float) -> None:
        self.threshold, self.w0, self.w1 = threshold, w0, w1
        self.tokens = 0  #: tokens received inside the window
        self.stalls = 0
        self.upstream_stalls = 0
        self.max_gap = 0.0  #: the longest inter-token gap overlapping the window, seconds
        self.prev_recv: float | None = None
        self.prev_sent: float | None = None

    def new_reply(self) -> None:
        self.prev_recv = self.prev_sent = None

    def token(self, received: float, sent: float) -> None:
        """A token written by the upstream at ``sent`` reached the client at ``received``."""
        if self.w0 <= received < self.w1:
            self.tokens += 1
        prev = self.prev_recv
        if prev is not None and received >= self.w0 and prev < self.w1:
            gap = received - prev
            if gap > self.max_gap:
                self.max_gap = gap
            if gap > self.threshold:
                self.stalls += 1
                if self.prev_sent is not None and sent - self.prev_sent > self.threshold:
                    self.upstream_stalls += 1
        self.prev_recv, self.prev_sent = received, sent

    def row(self) -> list[float]:
        """[tokens, stalls, upstream stalls, longest gap in ms]: what a client process reports."""
        return [self.tokens, self.stalls, self.upstream_stalls, round(self.max_gap * 1000, 2)]


def stall_summary(rows: Iterable[list[float]]) -> dict[str, Any]:
    """Stall-free streams from the clients' per-stream rows (see :meth:`StreamStalls.row`).

    A stream that received no token in the window is not stall-free: it was stalled the whole
    time."""
    streams = stalled = upstream = silent = 0
    worst = 0.0
    for tokens, stalls, up, gap_ms in rows:
        streams += 1
        if tokens == 0:
            silent += 1
        if stalls or tokens == 0:
            stalled += 1
        if up:
            upstream += 1
        worst = max(worst, gap_ms)
    return {
        "streams": streams,
        "stall_free": streams - stalled,
        "stalled": stalled,
        "stalled_by_upstream": upstream,
        "silent": silent,
        "worst_gap_ms": worst,
    }
