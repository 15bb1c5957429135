"""``tokenwire bench``: the seed's benchmark table, measured by a client against a running gateway."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from .transports import Sample, make_transport

__all__ = ["percentile", "run_bench", "summarize"]

SEED_CLAIM = (40, 60)  #: seed 000: "WebSocket cuts latency 40-60 % against SSE"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every figure is a real observation)."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def _dist(values: list[float], scale: float = 1.0) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in (50, 95, 99):
        v = percentile(values, q)
        out[f"p{q}"] = round(v * scale, 2) if v is not None else None
    out["mean"] = round(sum(values) / len(values) * scale, 2) if values else None
    return out


def http_url_of(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def summarize(model: str, transport: str, samples: list[Sample], price: float | None) -> dict[str, Any]:
    ok = [s for s in samples if s.error is None and s.ttft is not None]
    return {
        "model": model,
        "transport": transport,
        "runs": len(samples),
        "ok": len(ok),
        "errors": sorted({s.error for s in samples if s.error}),
        "ttft_ms": _dist([s.ttft for s in ok if s.ttft is not None], 1000),
        "tokens_per_s": _dist([t for s in ok if (t := s.tokens_per_s) is not None]),
        "total_ms": _dist([s.total for s in ok if s.total is not None], 1000),
        "tokens": _dist([float(s.tokens) for s in ok]),
        "price_per_mtok": price,
    }


def _fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def render_table(results: list[dict[str, Any]], max_tokens: int) -> str:
    head = (
        f"| model | transport | TTFT p50 / p95 / p99 (ms) | tokens/s p50 | {max_tokens} tokens p50 / p95 / p99 (ms) "
        "| $/MTok | ok |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in results:
        t, tot = r["ttft_ms"], r["total_ms"]
        lines.append(
            f"| {r['model']} | {r['transport']} | {_fmt(t['p50'])} / {_fmt(t['p95'])} / {_fmt(t['p99'])} "
            f"| {_fmt(r['tokens_per_s']['p50'])} | {_fmt(tot['p50'])} / {_fmt(tot['p95'])} / {_fmt(tot['p99'])} "
            f"| {_fmt(r['price_per_mtok'], 2)} | {r['ok']}/{r['runs']} |"
        )
    return "\n".join(lines)


def compare(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """WebSocket against each other transport, per model: how much lower (in %) WS's p50s are."""
    by = {(r["model"], r["transport"]): r for r in results}
    out = []
    for (model, transport), r in by.items():
        ws = by.get((model, "ws"))
        if transport == "ws" or ws is None:
            continue
        row: dict[str, Any] = {"model": model, "versus": transport}
        for key in ("ttft_ms", "total_ms"):
            a, b = ws[key]["p50"], r[key]["p50"]
            row[f"{key}_ws"] = a
            row[f"{key}_{transport}"] = b
            row[f"{key}_ws_lower_pct"] = round((b - a) / b * 100, 1) if a is not None and b else None
        out.append(row)
    return out


def render_comparison(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    lines = [
        "",
        "WebSocket vs other transports (p50; positive = WS faster). "
        f"Often claimed: WS {SEED_CLAIM[0]}-{SEED_CLAIM[1]} % lower latency than SSE.",
    ]
    for r in rows:
        v = r["versus"]
        lines.append(
            f"  {r['model']:<20} vs {v:<4}: TTFT {_fmt(r['ttft_ms_ws'], 1)} vs {_fmt(r[f'ttft_ms_{v}'], 1)} ms "
            f"({_fmt(r['ttft_ms_ws_lower_pct'], 1)} %), total {_fmt(r['total_ms_ws'], 0)} vs "
            f"{_fmt(r[f'total_ms_{v}'], 0)} ms ({_fmt(r['total_ms_ws_lower_pct'], 1)} %)"
        )
    sse = [r for r in rows if r["versus"] == "sse" and r["ttft_ms_ws_lower_pct"] is not None]
    if sse:
        worst = max(abs(r["ttft_ms_ws_lower_pct"]) for r in sse)
        verdict = (
            "within the claimed 40-60 %"
            if all(SEED_CLAIM[0] <= r["ttft_ms_ws_lower_pct"] <= SEED_CLAIM[1] for r in sse)
            else f"NOT the claimed 40-60 %: WS and SSE differ by at most {worst:.1f} % in TTFT here"
        )
        lines.append(f"  verdict: {verdict}")
    return "\n".join(lines)


class _Progress:
    def __init__(self, total: int, out: TextIO) -> None:
        self.total, self.done, self.out = total, 0, out
        self.tty = out.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        fill = int(width * self.done / max(1, self.total))
        bar = "#" * fill + "." * (width - fill)
        text = f"[{bar}] {self.done}/{self.total} {label}"
        if self.tty:
            self.out.write("\r" + text[:100].ljust(100))
            if self.done == self.total:
                self.out.write("\n")
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            self.out.write(text + "\n")
        self.out.flush()


async def _models(session: aiohttp.ClientSession, http: str) -> dict[str, dict[str, Any]]:
    try:
        async with session.get(http + "/v1/models") as resp:
            data = (await resp.json(loads=orjson.loads))["data"]
    except (aiohttp.ClientError, KeyError, ValueError):
        return {}
    return {m["id"]: m for m in data if "*" not in m["id"]}


async def run_bench(
    url: str,
    models: list[str] | None,
    runs: int,
    transports: list[str],
    max_tokens: int = 100,
    poll_interval: float = 0.1,
    progress: TextIO | None = None,
) -> dict[str, Any]:
    """Run every (model, transport) ``runs`` times, interleaved so drift hits all alike."""
    http = http_url_of(url)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        catalog = await _models(session, http)
        names = models or list(catalog) or ["gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2"]
        tps = {t: make_transport(t, http, url, session, poll_interval=poll_interval) for t in transports}
        samples: dict[tuple[str, str], list[Sample]] = {(m, t): [] for m in names for t in transports}
        bar = _Progress(runs * len(names) * len(transports), progress or sys.stderr)
        try:
            for model in names:  # warm-up: connect, fill pools, not measured
                for t in tps.values():
                    await t.generate(model, 2)
            for _ in range(runs):
                for model in names:
                    for name, t in tps.items():
                        try:
                            s = await t.generate(model, max_tokens)
                        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                            s = Sample(error=type(exc).__name__)
                        samples[(model, name)].append(s)
                        bar.step(f"{model} {name}")
        finally:
            for t in tps.values():
                await t.aclose()
    results = []
    for (model, name), ss in samples.items():
        price = ((catalog.get(model) or {}).get("pricing") or {}).get("output_per_mtok")
        results.append(summarize(model, name, ss, price))
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "url": url,
        "runs": runs,
        "max_tokens": max_tokens,
        "transports": transports,
        "poll_interval_s": poll_interval if "poll" in transports else None,
        "simulated": {m: bool((catalog.get(m) or {}).get("simulated")) for m in names},
        "results": results,
        "comparison": compare(results),
        "elapsed_s": None,
    }


def chart(report: dict[str, Any]) -> bytes:
    """The PNG of ``--chart`` (matplotlib, the ``bench`` extra: bench.plots)."""
    from .plots import bench_figure, png

    return png(bench_figure(report))


def main(args: Any) -> int:
    transports = [t.strip() for t in args.transport.split(",") if t.strip()]
    for t in transports:
        if t not in ("ws", "sse", "poll"):
            print(f"tokenwire bench: unknown transport {t!r} (known: ws, sse, poll)", file=sys.stderr)
            return 2
    if args.chart:
        from .plots import MissingExtra, require

        try:
            require()  # before the run, not after it
        except MissingExtra as exc:
            print(f"tokenwire bench: {exc}", file=sys.stderr)
            return 2
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    json_to_stdout = args.json == "-"
    out = sys.stderr if json_to_stdout else sys.stdout
    t0 = time.monotonic()
    try:
        report = asyncio.run(
            run_bench(args.url, models, args.runs, transports, args.max_tokens, args.poll_interval, sys.stderr)
        )
    except aiohttp.ClientConnectorError as exc:
        reason = exc.strerror or exc
        print(f"tokenwire bench: cannot reach {args.url}: {reason}; is the gateway running?", file=sys.stderr)
        return 1
    report["elapsed_s"] = round(time.monotonic() - t0, 2)
    sim = [m for m, s in report["simulated"].items() if s]
    print(render_table(report["results"], report["max_tokens"]), file=out)
    if sim:
        print(f"(simulated models: {', '.join(sim)} — their speed is the simulator's, not a provider's)", file=out)
    text = render_comparison(report["comparison"])
    if text:
        print(text, file=out)
    data = orjson.dumps(report, option=orjson.OPT_INDENT_2)
    if json_to_stdout:
        sys.stdout.write(data.decode() + "\n")
    elif args.json:
        with open(args.json, "wb") as fh:
            fh.write(data + b"\n")
    if args.chart:
        with open(args.chart, "wb") as fh:
            fh.write(chart(report))
        print(f"chart written to {args.chart}", file=out)
    failed = sum(r["runs"] - r["ok"] for r in report["results"])
    return 1 if failed == sum(r["runs"] for r in report["results"]) else 0
