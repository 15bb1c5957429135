"""``tokenwire capacity``: how many paced streams one core of gateway carries, shown honestly.

Why a command of its own (``tokenwire loadtest`` measures one load): a per-core figure means
nothing unless the gateway had its core to itself and the load generator was not the limit. So
for each N of ``--streams`` this

* pins the gateway to one core (``os.sched_setaffinity`` before it starts: its threads inherit
  it) and the fake upstream (``tokenwire simulate --wheel``) and the client processes
  (``tokenwire loadtest``'s) to the other cores;
* paces N streams at ``--tps`` tokens/s and measures, over a ``--window`` after a warm-up: the
  gateway's CPU µs per token and share of its core, added TTFT p50/p99, added inter-token gap
  p99, and **stall-free streams** (no gap between two tokens of a reply over ``--stall-factor``
  × the pacing interval while measuring);
* runs the bare-relay floor (:mod:`.floor`: one wake-up, ``recv`` and ``send`` per message) at
  the same N on the same core in the same sitting, and prints the gateway's CPU per token as a
  multiple of it — absolute figures on a shared VM drift, ratios taken side by side do not;
* reports the load generator's own CPU and event-loop lag next to the gateway's, and says so
  when it could not offer the load (then the gateway's share of its core is what it used at the
  load it was offered).

``--workers 1,2,4,8``: the same for ``serve --workers W`` (``SO_REUSEPORT``), every W with its
streams shared over Redis, each worker pinned to its own core and ``--streams`` read as streams
*per worker*; the result is stall-free streams per core for each W. A W that leaves no core for
the load generator cannot be pinned: it is run unpinned with a note, or skipped
(``--unpinned skip``).

The gateway measured is whichever ``python -m tokenwire serve`` the environment (or
``--gateway-src``) imports; everything on the measuring side comes from this package, so one
copy of this command compares two trees.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .. import procstat
from . import floor
from .loadtest import (
    _children,
    _HelpFormatter,
    _loop_name,
    _raise_nofile,
    _spawn,
    _stop,
    add_gateway_setting,
    await_ready,
    collect,
    gateway_env,
    gateway_settings,
    go,
    start_clients,
)
from .stats import hist_merge, hist_summary, stall_summary

__all__ = ["CorePlan", "add_arguments", "main", "plan_cores", "render_table", "verdict"]

#: the table's columns, in order: (heading, what it means) — the legend is printed under the table
COLUMNS: list[tuple[str, str]] = [
    ("workers", "gateway processes (serve --workers), each pinned to its own core when 'pinned'"),
    ("streams", "paced streams in all; (per worker) when there are several"),
    (
        "tokens/s relayed (due)",
        "tokens the clients received per second while measuring, and what the upstream's pace "
        "would deliver (N × tokens per reply / (reply time + TTFT))",
    ),
    ("gateway µs/token", "gateway CPU (user+sys, all its processes) while measuring / tokens relayed"),
    ("floor µs/msg", "the bare relay (one wake-up, recv and send per message) at the same N per core, same sitting"),
    ("× floor", "gateway µs/token ÷ floor µs/msg"),
    (
        "gateway core % (wait %)",
        "gateway CPU / window / its cores; wait: runnable but not running (another process had the core)",
    ),
    ("added TTFT p50 / p99 ms", "client time to first token − the upstream's own"),
    ("added gap p99 ms", "how much longer a gap between two tokens was at the client than at the upstream"),
    (
        "stall-free streams",
        "streams with no gap between two tokens of a reply over stall-factor × 1/tps while "
        "measuring (a stream that got no token is stalled)",
    ),
    (
        "load gen core % (lag p99 ms)",
        "fake upstream + clients: CPU / window / their cores, and the clients' event-loop lag p99",
    ),
    ("load avg", "1-minute load average at the end of the row (the machine may be shared)"),
    ("verdict", "ok, or what limited the row"),
]


# -- pure parts -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CorePlan:
    """Which CPUs the gateway's workers and the load generator get for one worker count."""

    workers: int
    gateway: tuple[int, ...]  #: one core per worker; empty when unpinned
    load: tuple[int, ...]  #: the rest; every CPU when unpinned
    note: str = ""

    @property
    def pinned(self) -> bool:
        return bool(self.gateway)


def plan_cores(available: Sequence[int], workers: int) -> CorePlan:
    """Worker i on the i-th CPU, the load generator on the rest; unpinned (with a note) when that
    would leave the load generator no CPU."""
    cpus = tuple(sorted(available))
    if workers < len(cpus):
        return CorePlan(workers, cpus[:workers], cpus[workers:])
    return CorePlan(
        workers,
        (),
        cpus,
        note=f"{workers} worker(s) cannot be pinned on {len(cpus)} CPU(s) with one left for the load generator: "
        "run unpinned, sharing every CPU with it",
    )


def parse_list(text: str) -> list[int]:
    """``"50,100,250"`` → ``[50, 100, 250]`` (positive integers, as given)."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, not {text!r}")
    return values


def due_tokens_per_s(streams: int, tps: float, tokens: int, ttft_s: float) -> float:
    """What the upstream's pace delivers: each stream repeats (TTFT, then ``tokens`` at ``tps``)."""
    if tps <= 0 or tokens <= 0:
        return 0.0
    return streams * tokens / (tokens / tps + ttft_s)


def verdict(row: dict[str, Any]) -> str:
    """What limited a row, judged on the figures beside it (the thresholds are stated in the text)."""
    relayed = row["tokens_per_s"] / row["due_tokens_per_s"] if row["due_tokens_per_s"] else 0.0
    load_busy = row["load_core_share"] is not None and row["load_core_share"] >= 0.85
    lag = row["client_lag_p99_ms"] or 0.0
    late_clients = lag > row["interval_ms"]
    gateway_busy = row["gateway_core_share"] >= 0.9
    notes = []
    if row["errors"]:
        notes.append(f"{row['errors']} errors")
    if row["short_replies"]:
        notes.append(f"{row['short_replies']} replies with missing tokens")
    short = relayed < 0.95
    if load_busy or row["stalled_by_upstream"] or (late_clients and short):
        why = []
        if load_busy:
            why.append(f"its cores {row['load_core_share'] * 100:.0f} % busy")
        if late_clients:
            why.append(f"client lag p99 {lag:.0f} ms > the {row['interval_ms']:g} ms token interval")
        if row["stalled_by_upstream"]:
            why.append(f"the upstream itself late on {row['stalled_by_upstream']} streams")
        notes.append(
            f"load generator short of CPU ({', '.join(why)}): offered {relayed * 100:.0f} % of the load; "
            f"gateway at {row['gateway_core_share'] * 100:.0f} % of its core(s) there"
        )
    elif gateway_busy:
        notes.append("gateway saturated")
    if row["gateway_wait_share"] >= 0.1:  # whatever else: the gateway did not have its core to itself
        notes.append(
            f"gateway waited for its core {row['gateway_wait_share'] * 100:.0f} % of the time (shared machine)"
        )
    elif short and not notes:
        notes.append(f"relayed {relayed * 100:.0f} % of the tokens due")
    if late_clients and not notes:
        notes.append(f"client lag p99 {lag:.0f} ms: the gaps and TTFTs include it")
    if row["stalled"] and not notes:
        notes.append(f"{row['stalled']} stalled streams")
    if not row["pinned"]:
        notes.append("unpinned")
    return "; ".join(notes) or "ok"


def _f(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def render_table(rows: Iterable[dict[str, Any]]) -> str:
    """One markdown table, a line per (workers, N) run."""
    out = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---:|" * (len(COLUMNS) - 1) + "---|"]
    for r in rows:
        streams = f"{r['streams']:,}" + (f" ({r['streams_per_worker']:,})" if r["workers"] > 1 else "")
        load = r["load_core_share"]
        cells = [
            f"{r['workers']}" + ("" if r["pinned"] else " (unpinned)"),
            streams,
            f"{r['tokens_per_s']:,.0f} ({r['due_tokens_per_s']:,.0f})",
            _f(r["gateway_us_per_token"]),
            _f(r["floor_us_per_msg"]),
            "–" if r["floor_multiple"] is None else f"{r['floor_multiple']:.2f}×",
            f"{r['gateway_core_share'] * 100:.0f} ({r['gateway_wait_share'] * 100:.0f})",
            f"{_f(r['added_ttft_p50_ms'], 2)} / {_f(r['added_ttft_p99_ms'], 2)}",
            _f(r["added_gap_p99_ms"], 2),
            f"{r['stall_free']:,} / {r['streams']:,}",
            ("–" if load is None else f"{load * 100:.0f}") + f" ({_f(r['client_lag_p99_ms'], 2)})",
            f"{r['load_avg']:.1f}",
            r["verdict"],
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def per_core_summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """For each worker count: the largest N with every stream stall-free, per core (and what else its row says)."""
    lines = []
    for w in sorted({r["workers"] for r in rows}):
        mine = [r for r in rows if r["workers"] == w]
        clean = [r for r in mine if r["stall_free"] == r["streams"]]
        if clean:
            best = max(clean, key=lambda r: r["streams"])
            lines.append(
                f"- {w} worker(s): **{best['streams'] // w:,} stall-free streams per core** "
                f"({best['streams']:,} in all: the largest N tried with every stream stall-free; verdict: "
                f"{best['verdict']})"
            )
        else:
            least = min(r["streams"] for r in mine)
            lines.append(f"- {w} worker(s): streams stalled at every N tried (smallest: {least:,})")
    return lines


# -- measuring ------------------------------------------------------------------------------
def _say(text: str) -> None:
    """A progress line (stderr, whole lines: each run takes a while, and a pipe shows them too)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _pin_tree(pid: int, cores: set[int]) -> None:
    """Pin every thread a process has now (threads it makes later inherit the main thread's set)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, PermissionError):
            pass


def _cpu(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += procstat.cpu_seconds(pid)
        except OSError:
            pass
    return total


def _wait(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += procstat.schedstat(pid)[1]
        except OSError:
            pass
    return total


def _upstreams(work: Path, count: int, args: argparse.Namespace) -> tuple[list[subprocess.Popen[bytes]], int]:
    """``count`` fake upstreams on one port (``SO_REUSEPORT``), on the load generator's CPUs."""
    cmd = ["-m", "tokenwire", "simulate", "--wheel", "--reuse-port", "--tps", str(args.tps)]
    cmd += ["--tokens", str(args.tokens), "--ttft-ms", str(args.ttft_ms), "--port"]
    first, port = _spawn([*cmd, "0"], work / "upstream-0.log", {"PYTHONPATH": _this_src()})
    procs = [first]
    try:
        for i in range(1, count):
            procs.append(_spawn([*cmd, str(port)], work / f"upstream-{i}.log", {"PYTHONPATH": _this_src()})[0])
    except BaseException:
        for p in procs:
            _stop(p)
        raise
    return procs, port


def _this_src() -> str:
    """This package's tree: the load generator is always ours, whatever gateway is measured."""
    return str(Path(__file__).resolve().parents[2])


def _gateway_tree(env_src: str | None) -> str:
    env = dict(os.environ)
    if env_src:
        env["PYTHONPATH"] = env_src
    out = subprocess.run(
        [sys.executable, "-c", "import os, tokenwire; print(os.path.dirname(tokenwire.__file__))"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    return out.stdout.strip() or f"(cannot import tokenwire: {out.stderr.strip()[-200:]})"


def measure_gateway(
    args: argparse.Namespace, plan: CorePlan, streams: int, redis_url: str | None, work: Path
) -> dict[str, Any]:
    """One run: fake upstream(s), the gateway pinned by ``plan``, clients; figures over the window."""
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(plan.load))  # this process and every load process it starts
    n_up = args.upstreams or max(1, math.ceil(len(plan.load) / 3))
    n_cl = args.clients or max(1, len(plan.load) - n_up)
    n_cl = min(n_cl, streams)
    ups, up_port = _upstreams(work, n_up, args)
    procs: list[subprocess.Popen[bytes]] = list(ups)
    try:
        env = gateway_env(up_port, args.loop, False, plan.workers, redis_url)
        if args.gateway_src:
            env["PYTHONPATH"] = args.gateway_src
        env.update(gateway_settings(args.gateway_setting))
        cmd = ["-m", "tokenwire", "serve", "--port", "0", "--log-level", "warning"]
        gw, gw_port = _spawn(cmd, work / "gateway.log", env, set(plan.gateway) or None)
        procs.append(gw)
        gw_pids = _children(gw.pid) if plan.workers > 1 else [gw.pid]
        if plan.workers > 1 and len(gw_pids) != plan.workers:
            raise RuntimeError(f"expected {plan.workers} gateway workers, found {len(gw_pids)}")
        if plan.pinned:
            for pid, core in zip(sorted(gw_pids), plan.gateway, strict=True):
                _pin_tree(pid, {core})
        stall_s = args.stall_factor / args.tps
        cfg = {
            "url": f"ws://127.0.0.1:{gw_port}/ws/chat",
            "mode": "stream",
            "warmup": args.warmup,
            "duration": args.window,
            "tokens": args.tokens,
            "model": "gpt-4.1",
            "heartbeat": 0,
            "spread": args.tokens / args.tps,
            "churn": False,
            "stall_s": stall_s,
        }
        _say(f"  connecting {streams:,} streams from {n_cl} client process(es) ({n_up} fake upstream process(es))…")
        clients = start_clients(work, streams, n_cl, cfg)
        procs += clients
        await_ready(clients)
        t0 = time.monotonic() + 0.3
        go(clients, t0)
        w0, w1 = t0 + args.warmup, t0 + args.warmup + args.window
        time.sleep(max(0.0, w0 - time.monotonic()))
        load_pids = [p.pid for p in ups] + [p.pid for p in clients]
        g0, gw0, l0 = _cpu(gw_pids), _wait(gw_pids), _cpu(load_pids)
        next_line = time.monotonic() + 10
        while (now := time.monotonic()) < w1:
            if now >= next_line:
                _say(f"  measuring {now - w0:.0f}/{args.window:g} s")
                next_line = now + 10
            time.sleep(max(0.0, min(0.5, w1 - now)))
        g1, gw1, l1 = _cpu(gw_pids), _wait(gw_pids), _cpu(load_pids)
        results = collect(clients, work, args.warmup + args.window + 120)
    finally:
        for p in reversed(procs):
            if p.stdin is None:  # a server: let it drain
                _stop(p)
            elif p.poll() is None:  # a client that did not finish
                p.kill()
                p.wait(10)
        os.sched_setaffinity(0, everywhere)
    return _row(args, plan, streams, results, g1 - g0, gw1 - gw0, l1 - l0)


def _row(
    args: argparse.Namespace,
    plan: CorePlan,
    streams: int,
    results: list[dict[str, Any]],
    gw_cpu: float,
    gw_wait: float,
    load_cpu: float,
) -> dict[str, Any]:
    hist: dict[str, dict[int, int]] = {k: {} for k in ("added_ttft", "gap", "lag")}
    tokens = errors = short = generations = 0
    per_stream: list[list[float]] = []
    for r in results:
        for k in hist:
            hist_merge(hist[k], r[k])
        tokens += r["tokens"]
        errors += r["errors"] + r["connect_errors"] + r["closed"]
        short += r.get("short_replies", 0)
        generations += r["generations"]
        per_stream += r["streams"]
    stalls = stall_summary(per_stream)
    ttft, gap, lag = (hist_summary(hist[k]) for k in ("added_ttft", "gap", "lag"))
    cores = plan.workers if plan.pinned else len(plan.load)
    row: dict[str, Any] = {
        "workers": plan.workers,
        "pinned": plan.pinned,
        "gateway_cores": list(plan.gateway),
        "load_cores": list(plan.load),
        "streams": streams,
        "streams_per_worker": streams // plan.workers,
        "window_s": args.window,
        "tokens": tokens,
        "generations": generations,
        "short_replies": short,
        "errors": errors,
        "tokens_per_s": round(tokens / args.window, 1),
        "due_tokens_per_s": round(due_tokens_per_s(streams, args.tps, args.tokens, args.ttft_ms / 1000), 1),
        "interval_ms": 1000 / args.tps,
        "gateway_cpu_s": round(gw_cpu, 3),
        "gateway_us_per_token": round(gw_cpu / tokens * 1e6, 2) if tokens else None,
        "gateway_core_share": round(gw_cpu / args.window / cores, 3),
        "gateway_wait_share": round(gw_wait / args.window / cores, 3),
        "load_core_share": round(load_cpu / args.window / len(plan.load), 3) if plan.pinned else None,
        "load_cpu_s": round(load_cpu, 3),
        "added_ttft_p50_ms": ttft["p50"],
        "added_ttft_p99_ms": ttft["p99"],
        "added_gap_p99_ms": gap["p99"],
        "client_lag_p99_ms": lag["p99"],
        **stalls,
        "tokens_seen_by_streams": int(sum(t[0] for t in per_stream)),  # == tokens: the two counts agree
        "load_avg": round(os.getloadavg()[0], 2),
    }
    return row


def measure_floor(args: argparse.Namespace, plan: CorePlan, streams_per_core: int) -> floor.FloorResult:
    """The bare relay on the first gateway core, its source (this process) and sink on the load's."""
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(plan.load))
    try:
        relay = {plan.gateway[0]} if plan.pinned else None
        loop = _loop_name(args.loop)
        return floor.measure(streams_per_core, args.tps, args.floor_window, loop, relay, set(plan.load))
    finally:
        os.sched_setaffinity(0, everywhere)


def run(args: argparse.Namespace, say: Callable[[str], None] = _say) -> dict[str, Any]:
    _raise_nofile()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers
    available = sorted(os.sched_getaffinity(0))
    scale_out = args.workers is not None
    worker_counts = args.workers or [1]
    redis_url = args.redis_url if scale_out else None
    if redis_url:
        _check_redis(redis_url)
    work = Path(tempfile.mkdtemp(prefix="tokenwire-capacity-"))
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.uname().nodename} {os.uname().machine}, {len(available)} CPUs usable",
        "load_avg_start": round(os.getloadavg()[0], 2),
        "gateway_tree": _gateway_tree(args.gateway_src),
        "event_loop": _loop_name(args.loop),
        "gateway_settings": list(args.gateway_setting or []),
        "tps": args.tps,
        "tokens_per_reply": args.tokens,
        "window_s": args.window,
        "warmup_s": args.warmup,
        "stall_ms": 1000 * args.stall_factor / args.tps,
        "redis": redis_url,
        "notes": [],
        "rows": [],
        "floor": {},
        "logs": str(work),
    }
    say(f"gateway under test: {report['gateway_tree']} ({report['event_loop']}); {report['machine']}")
    floors: dict[int, floor.FloorResult] = {}
    for w in worker_counts:
        plan = plan_cores(available, w)
        if plan.note:
            skip = args.unpinned == "skip"
            report["notes"].append(plan.note.replace("run unpinned", "skipped") if skip else plan.note)
            say(report["notes"][-1])
            if skip:
                continue
        for n in args.streams:
            total = n * w if scale_out else n
            label = f"{w} worker(s), {total:,} streams" if scale_out else f"{total:,} streams"
            if not args.no_floor and n not in floors:
                say(f"{label}: bare-relay floor at {n:,} streams, {args.floor_window:g} s…")
                floors[n] = measure_floor(args, plan if plan.pinned else plan_cores(available, 1), n)
                fr = floors[n]
                report["floor"][str(n)] = {
                    "us_per_message": fr.us_per_message,
                    "core_share": round(fr.core_share, 3),
                    "offered_share": round(fr.offered_share, 3),
                    "wait_share": round(fr.wait_s / fr.seconds, 3) if fr.seconds else None,
                }
                say(f"  floor: {fr.us_per_message or 0:.1f} µs/message ({fr.core_share * 100:.0f} % of a core)")
            say(
                f"{label}: starting the fake upstream and the gateway "
                f"({args.warmup:g} s warm-up, {args.window:g} s window)…"
            )
            run_dir = work / f"w{w}-n{total}"
            run_dir.mkdir()
            row = measure_gateway(args, plan, total, redis_url, run_dir)
            fr_n = floors.get(n)
            row["floor_us_per_msg"] = round(fr_n.us_per_message, 2) if fr_n and fr_n.us_per_message else None
            multiple = (row["gateway_us_per_token"] or 0) / row["floor_us_per_msg"] if row["floor_us_per_msg"] else None
            row["floor_multiple"] = round(multiple, 2) if multiple else None
            row["verdict"] = verdict(row)
            report["rows"].append(row)
            say(
                f"  {row['tokens_per_s']:,.0f} tokens/s, {row['gateway_us_per_token']} µs/token"
                f" ({row['floor_multiple']}× floor), stall-free {row['stall_free']}/{row['streams']}: {row['verdict']}"
            )
    report["load_avg_end"] = round(os.getloadavg()[0], 2)
    return report


def _check_redis(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        raise SystemExit(f"tokenwire capacity: --workers shares streams over Redis, and {url} answers: {exc}") from None


def render(report: dict[str, Any]) -> str:
    """The report: a heading, the markdown table, streams per core, notes and the legend."""
    rows = report["rows"]
    head = (
        f"tokenwire capacity — {report['date']}, {report['machine']}, load average {report['load_avg_start']} → "
        f"{report.get('load_avg_end', '?')}; gateway {report['gateway_tree']} on {report['event_loop']}"
        + "".join(f", {pair}" for pair in report.get("gateway_settings", []))
        + "; "
        f"{report['tps']:g} tok/s per stream, {report['tokens_per_reply']}-token replies, "
        f"{report['window_s']:g} s window after {report['warmup_s']:g} s warm-up, stall = gap > "
        f"{report['stall_ms']:g} ms" + (f"; streams over Redis {report['redis']}" if report["redis"] else "")
    )
    parts = [head, "", render_table(rows) if rows else "(nothing ran)", ""]
    if rows:
        parts += ["Streams per core:", *per_core_summary(rows), ""]
        limited = [r for r in rows if "load generator short" in r["verdict"]]
        if limited:
            parts.append(
                "This machine could not offer the load at "
                + ", ".join(f"{r['streams']:,} streams" for r in limited)
                + ": the gateway's share of its core(s) there was "
                + ", ".join(f"{r['gateway_core_share'] * 100:.0f} %" for r in limited)
                + " at the load it was offered (its µs/token is still a fair per-token cost)."
            )
    for n, fl in report["floor"].items():
        if fl["offered_share"] < 0.95:
            parts.append(
                f"Note: the floor's source sent only {fl['offered_share'] * 100:.0f} % of the messages due at {n} "
                "streams (it shares the load CPUs): its µs/message is at that lower rate."
            )
    parts += [f"Note: {n}" for n in report["notes"]]
    parts.append("Columns:")
    parts += [f"- {name}: {text}" for name, text in COLUMNS]
    return "\n".join(parts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = _HelpFormatter
    p.description = (
        "Pins the gateway to one core (--workers: one core per worker) and a fake upstream and load clients to\n"
        "the others, paces N streams and reports per-core capacity beside the bare-relay floor measured in the\n"
        "same sitting. Prints progress lines to stderr and one markdown table to stdout."
    )
    p.epilog = "the table's columns:\n" + "\n".join(f"  {name}: {text}" for name, text in COLUMNS)
    p.add_argument("--streams", type=parse_list, default=[50, 100, 250, 500, 1000], help="N values, comma-separated")
    p.add_argument(
        "--workers",
        type=parse_list,
        default=None,
        help="worker counts, e.g. 1,2,4,8: serve --workers W over Redis, --streams per worker (default: one "
        "process, no Redis)",
    )
    p.add_argument("--window", type=float, default=60.0, help="measured seconds per N")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (streams start spread)")
    p.add_argument("--tps", type=float, default=50.0, help="tokens per second per stream")
    p.add_argument("--tokens", type=int, default=100, help="tokens per reply; a stream starts a new one at the end")
    p.add_argument("--ttft-ms", type=float, default=100.0, help="the upstream's own time to first token")
    p.add_argument("--stall-factor", type=float, default=10.0, help="a stall is a gap over this × 1/tps")
    p.add_argument("--floor-window", type=float, default=20.0, help="seconds of the bare-relay floor per N")
    p.add_argument("--no-floor", action="store_true", help="skip the floor (no × floor column)")
    p.add_argument("--clients", type=int, default=0, help="client processes (0: one per load CPU left)")
    p.add_argument("--upstreams", type=int, default=0, help="fake upstream processes (0: one per 3 load CPUs)")
    p.add_argument("--unpinned", choices=("run", "skip"), default="run", help="a W that cannot be pinned")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="the gateway's event loop")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis for --workers")
    p.add_argument("--gateway-src", metavar="DIR", help="PYTHONPATH of the gateway under test (another tree's src)")
    add_gateway_setting(p)
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")


def main(args: argparse.Namespace) -> int:
    try:
        gateway_settings(args.gateway_setting)
    except ValueError as exc:
        print(f"tokenwire capacity: {exc}", file=sys.stderr)
        return 2
    if args.window <= 0 or args.floor_window <= 0:
        print("tokenwire capacity: --window and --floor-window must be positive", file=sys.stderr)
        return 2
    report = run(args)
    print(render(report))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return 0 if all(r["errors"] == 0 for r in report["rows"]) else 1
