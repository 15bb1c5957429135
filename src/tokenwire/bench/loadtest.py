"""``tokenwire loadtest``: many concurrent streams (or idle sockets) through one gateway process.

The fake upstream (``tokenwire simulate --wheel``, :mod:`tokenwire.simulate.wheel`) and the gateway run as
separate processes, and the client load is spread over ``--clients`` worker
processes (one Python client process cannot receive 100k WebSocket messages
per second). Each upstream token carries the ``time.monotonic()`` at which it
was written, so every figure is the gateway's *added* share, per token:

* added TTFT = (client's TTFT) − (upstream's own TTFT: request arrival → first token written);
* relay latency = token received by the client − token written by the upstream;
* added inter-token gap = how much longer the gap between two tokens was at the client than at
  the upstream (relay latency of a token − that of the previous one; 0 when the gap got shorter,
  which happens when the gateway catches up after a delay: it never adds negative time).

These include the client's own delays (its event-loop lag is reported next to
them) and the loopback network; on a shared 2-core machine they also include
CPU contention between gateway, upstream and clients.

Gateway CPU per token is the gateway process's CPU time (from /proc) during the
measuring window divided by the tokens the clients received in that window.
Memory per connection is (gateway RSS with every socket open − RSS before) / N.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .. import procstat
from ..config import Settings
from ..simulate.fastloop import run_fast
from .plots import INSTALL
from .stats import RES_US, StreamStalls, added_gap
from .stats import hist_add as _hist_add
from .stats import hist_merge as _merge
from .stats import hist_summary as _hist_summary

__all__ = ["add_arguments", "added_gap", "main"]

_LISTEN = re.compile(rb"listening on http://([\d.]+):(\d+)")


#: what each figure of the report means (printed under it, and in --help)
FIGURES = {
    "gateway memory": "the gateway's RSS before the sockets, with all of them open, and the difference per socket",
    "tokens relayed": "tokens the clients received while measuring (after the warm-up), and replies that ended",
    "gateway CPU": "the gateway's CPU time while measuring / tokens relayed; 'waiting for a CPU' is run-queue "
    "time (high = the machine, not the gateway, is the limit)",
    "added TTFT": "client time to first token − the upstream's own (request arrival → first token written)",
    "relay latency": "token received by the client − token written by the upstream (loopback network included)",
    "added gap": "how much longer the gap between two tokens was at the client than at the upstream (never < 0)",
    "client event-loop lag": "how late the load clients' own timers fired: large = the clients, not the gateway, "
    "were slow",
    "gateway RSS growth": "the slope of the gateway's memory over the run (a leak shows here)",
}


class _Progress:
    """One status line on a terminal (rewritten in place, at most a few times a second); nothing otherwise."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.on = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""

    def show(self, text: str) -> None:
        if self.on and text != self._last:
            self._last = text
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()

    def bar(self, label: str, done: float, total: float) -> None:
        frac = min(1.0, max(0.0, done / total)) if total > 0 else 1.0
        width = 24
        full = round(frac * width)
        self.show(f"{label} [{'#' * full}{'.' * (width - full)}] {min(done, total):.0f}/{total:g} s")

    def clear(self) -> None:
        if self.on and self._last:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._last = ""


def _wait(progress: _Progress, label: str, start: float, end: float) -> None:
    """Sleep until ``end`` (monotonic), showing how far from ``start`` it got."""
    while (now := time.monotonic()) < end:
        progress.bar(label, now - start, end - start)
        time.sleep(min(0.25, end - now))


# -- worker process ------------------------------------------------------------------
async def _worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    n = cfg["streams"]
    url = cfg["url"]
    mode = cfg["mode"]
    added_ttft: Counter[int] = Counter()
    relay: Counter[int] = Counter()
    gap: Counter[int] = Counter()
    lag: Counter[int] = Counter()
    stats = {"tokens": 0, "generations": 0, "errors": 0, "closed": 0, "connect_errors": 0, "short_replies": 0}
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=0)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
    sockets: list[Any] = [None] * n
    sem = asyncio.Semaphore(64)

    async def connect(i: int) -> Any:
        async with sem:
            for attempt in range(5):
                try:
                    return await session.ws_connect(url, autoping=True, heartbeat=None, max_msg_size=0)
                except (aiohttp.ClientError, OSError) as exc:
                    if attempt == 4:
                        stats["connect_errors"] += 1
                        errors[type(exc).__name__] += 1
                        return None
                    await asyncio.sleep(0.2 * (attempt + 1))
        return None

    loop = asyncio.get_running_loop()
    w_end = [float("inf")]
    readers: list[asyncio.Task[None]] = []
    open_now = 0

    async def lag_monitor() -> None:
        while time.monotonic() < w1:
            due = time.monotonic() + 0.01
            await asyncio.sleep(0.01)
            now = time.monotonic()
            if w0 <= now:
                _hist_add(lag, max(0.0, now - due))

    finishing = [False]

    async def idle(i: int) -> None:
        """Read from the moment the socket is open (so the server's pings are answered); no timers."""
        ws = sockets[i]
        if ws is None:
            return
        while True:
            try:
                msg = await ws.receive()
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                msg = None
            if msg is None or msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                if not finishing[0]:
                    stats["closed"] += 1
                    errors[f"closed by server ({ws.close_code})"] += 1
                return

    async def heartbeats(t0: float) -> None:
        """One task sends every socket an app-level ping every ``heartbeat`` s, spread over the interval."""
        hb = cfg["heartbeat"]
        if hb <= 0:
            return
        live = [ws for ws in sockets if ws is not None]
        step = hb / max(1, len(live))
        due = t0
        while True:
            for ws in live:
                due += step
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.monotonic() >= w_end[0]:
                    return
                if not ws.closed:
                    try:
                        await ws.send_str('{"type":"ping"}')
                    except (aiohttp.ClientError, ConnectionError, RuntimeError):
                        pass

    model = cfg["model"]
    frame_head = '{"type":"chat","model":' + orjson.dumps(model).decode()
    frame_tail = ',"messages":[{"role":"user","content":"load"}],"params":{"max_tokens":' + str(cfg["tokens"]) + "}}"

    stall_s = cfg.get("stall_s") or 0.0
    per_stream: list[StreamStalls] = []
    expected = cfg["tokens"]

    async def streamer(i: int) -> None:
        await asyncio.sleep(max(0.0, t0 + random.random() * cfg["spread"] - time.monotonic()))
        ws = sockets[i]
        k = 0
        track = StreamStalls(stall_s, w0, w1) if stall_s else None
        if track is not None:
            per_stream.append(track)
        while time.monotonic() < w1:
            if ws is None or ws.closed:
                ws = await connect(i)
                if ws is None:
                    await asyncio.sleep(0.5)
                    continue
            k += 1
            t_send = time.monotonic()
            await ws.send_str(frame_head + f',"id":"g{k}"' + frame_tail)
            prev = None
            got = 0
            if track is not None:
                track.new_reply()
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    stats["closed"] += 1
                    ws = None
                    break
                now = time.monotonic()
                data = msg.data
                if '"type":"token"' in data:
                    content = orjson.loads(data)["content"]
                    inside = w0 <= now < w1
                    if content[0] == "a":
                        arrival, sent = content[1:].split("/")
                        sent_s = int(sent) / 1e6
                        lat = now - sent_s
                        if inside:
                            _hist_add(added_ttft, (now - t_send) - (sent_s - int(arrival) / 1e6))
                    else:
                        lat = now - int(content[1:]) / 1e6
                        if inside and prev is not None:
                            gap[round(added_gap(lat, prev) * 1e6 / RES_US)] += 1
                    if inside:
                        _hist_add(relay, lat)
                        stats["tokens"] += 1
                    if track is not None:
                        track.token(now, now - lat)
                    got += 1
                    prev = lat
                elif '"type":"end"' in data:
                    event = orjson.loads(data)
                    if w0 <= now < w1:
                        stats["generations"] += 1
                        if event.get("status") != "completed":
                            stats["errors"] += 1
                            errors[str(event.get("status"))] += 1
                        elif got != expected:  # every token of the reply, no more, no fewer
                            stats["short_replies"] += 1
                    break
                elif '"type":"error"' in data:
                    if w0 <= now < w1:
                        errors[str(orjson.loads(data).get("code"))] += 1
            if cfg.get("churn") and ws is not None:
                await ws.close()
                ws = None
        if ws is not None:
            await ws.close()

    async def connect_idle(i: int) -> None:
        sockets[i] = await connect(i)
        readers.append(loop.create_task(idle(i)))

    if mode == "idle":
        await asyncio.gather(*(connect_idle(i) for i in range(n)))
    elif not cfg.get("churn"):
        sockets = list(await asyncio.gather(*(connect(i) for i in range(n))))
    print("ready", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    t0 = float(line.split()[1])
    w0 = t0 + cfg["warmup"]
    w1 = w0 + cfg["duration"]
    w_end[0] = w1
    mon = loop.create_task(lag_monitor())
    if mode == "idle":
        await heartbeats(t0)
        await asyncio.sleep(max(0.0, w1 - time.monotonic()))
        open_now = sum(1 for ws in sockets if ws is not None and not ws.closed)
        finishing[0] = True
    else:
        await asyncio.gather(*(streamer(i) for i in range(n)))
    await mon
    still_open = open_now if mode == "idle" else sum(1 for ws in sockets if ws is not None and not ws.closed)
    await asyncio.gather(*(ws.close() for ws in sockets if ws is not None and not ws.closed), return_exceptions=True)
    await asyncio.gather(*readers, return_exceptions=True)
    await session.close()
    cpu = procstat.cpu_seconds(os.getpid())
    return {
        **stats,
        "open_at_end": still_open,
        "errors_by_kind": dict(errors),
        "added_ttft": dict(added_ttft),
        "relay": dict(relay),
        "gap": dict(gap),
        "lag": dict(lag),
        "cpu_s": cpu,
        "streams": [t.row() for t in per_stream],
    }


def _worker_main(cfg_json: str) -> None:
    _raise_nofile()
    cfg = orjson.loads(cfg_json)
    result = run_fast(_worker(cfg))
    # to a file, not down the stdout pipe: a result of 64 KiB and more came out cut at 64 KiB
    # with the client on uvloop
    Path(cfg["result_path"]).write_bytes(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS))
    sys.stdout.write("result written\n")
    sys.stdout.flush()


# -- orchestration --------------------------------------------------------------------
def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None, cores: set[int] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server process (output to ``log``) and wait for its "listening on" line.

    ``cores``: the CPUs it may run on, set before it starts so every thread it makes inherits them."""
    fh = open(log, "wb")
    full_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("TOKENWIRE_")}
    full_env.pop("OPENAI_BASE_URL", None)
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    proc = subprocess.Popen([sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT, env=full_env, preexec_fn=pin)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = _LISTEN.search(log.read_bytes())
        if m:
            return proc, int(m.group(2))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{' '.join(args)} did not start:\n{log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def gateway_settings(pairs: list[str] | None) -> dict[str, str]:
    """``--gateway-setting NAME=VALUE`` options as the gateway's ``TOKENWIRE_NAME`` variables.

    The gateway under load gets none of this shell's ``TOKENWIRE_*`` variables (a developer's
    settings would change what is measured without saying so), so a setting to compare (e.g.
    ``gc_policy=default``) is named here, checked against :class:`~tokenwire.config.Settings`,
    and printed in the report's heading. Raises ValueError on a malformed or unknown one.
    """
    names = {f.name for f in dataclasses.fields(Settings)} - {"providers", "models", "aliases", "routes"}
    env: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        name = name.strip().lower()
        if not sep or name not in names:
            raise ValueError(
                f"--gateway-setting {pair!r}: expected NAME=VALUE, NAME one of the [server] settings "
                "(e.g. gc_policy=default)"
            )
        env[f"TOKENWIRE_{name.upper()}"] = value
    return env


def gateway_env(
    upstream_port: int, loop: str, access_log: bool = False, workers: int = 1, redis_url: str | None = None
) -> dict[str, str]:
    """The environment of a gateway under load: the fake upstream as its only provider, nothing kept on
    disk, no idle cut-off; with ``redis_url``, streams shared over Redis (as ``serve --workers N`` needs)."""
    env = {
        "OPENAI_API_KEY": "sk-loadtest",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "TOKENWIRE_DB": ":memory:",
        "TOKENWIRE_ACCESS_LOG": "1" if access_log else "0",
        "TOKENWIRE_IDLE_TIMEOUT": "600",
        "TOKENWIRE_EVENT_LOOP": loop,
        "TOKENWIRE_WORKERS": str(workers),
    }
    if redis_url:
        env["TOKENWIRE_REDIS_URL"] = redis_url
        env["TOKENWIRE_REDIS_PREFIX"] = f"tw-loadtest-{os.getpid()}-{time.monotonic_ns()}"
    return env


def start_clients(work: Path, streams: int, clients: int, cfg: dict[str, Any]) -> list[subprocess.Popen[bytes]]:
    """``clients`` load processes sharing ``streams`` between them; each connects, then says "ready"."""
    q, extra = divmod(streams, clients)
    procs = []
    for i in range(clients):
        one = {**cfg, "streams": q + (1 if i < extra else 0), "result_path": str(work / f"client-{i}.json")}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tokenwire.bench.loadtest", "--worker", orjson.dumps(one).decode()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        )
    return procs


def await_ready(procs: list[subprocess.Popen[bytes]]) -> None:
    for w in procs:
        assert w.stdout is not None
        line = w.stdout.readline()
        if not line.startswith(b"ready"):
            raise RuntimeError(f"a load client failed to start: {line!r}")


def go(procs: list[subprocess.Popen[bytes]], t0: float) -> None:
    """Every client starts its clock at ``t0`` (monotonic: shared by the processes of a Linux host)."""
    for w in procs:
        assert w.stdin is not None
        w.stdin.write(f"go {t0}\n".encode())
        w.stdin.flush()


def collect(procs: list[subprocess.Popen[bytes]], work: Path, timeout: float) -> list[dict[str, Any]]:
    results = []
    for i, w in enumerate(procs):
        out, _ = w.communicate(timeout=timeout)
        if b"result written" in out:
            results.append(orjson.loads((work / f"client-{i}.json").read_bytes()))
    if len(results) != len(procs):
        raise RuntimeError("a load client failed; see its output")
    return results


def run(args: argparse.Namespace, progress: _Progress | None = None) -> dict[str, Any]:
    progress = progress or _Progress()
    limit = _raise_nofile()
    progress.show("starting the fake upstream and the gateway…")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers
    work = Path(tempfile.mkdtemp(prefix="tokenwire-load-"))
    up, up_port = _spawn(
        [
            "-m",
            "tokenwire",
            "simulate",
            "--wheel",
            "--port",
            "0",
            "--tps",
            str(args.tps),
            "--tokens",
            str(args.tokens),
            "--ttft-ms",
            str(args.ttft_ms),
        ],
        work / "upstream.log",
    )
    gw_env = gateway_env(
        up_port, args.loop, args.access_log, args.workers, args.redis_url if args.workers > 1 else None
    )
    gw_env.update(gateway_settings(args.gateway_setting))
    gw_cmd = ["-m", "tokenwire", "serve", "--port", "0", "--log-level", "warning"]
    gw, gw_port = _spawn(gw_cmd, work / "gateway.log", gw_env)
    gw_pids = _children(gw.pid) if args.workers > 1 else [gw.pid]
    workers: list[subprocess.Popen[bytes]] = []
    report: dict[str, Any] = {
        "mode": args.mode,
        "event_loop": _loop_name(args.loop),
        "gateway_settings": list(args.gateway_setting or []),
        "gateway_workers": args.workers,
        "streams": args.streams,
        "clients": args.clients,
        "tps": args.tps if args.mode != "idle" else None,
        "tokens_per_reply": args.tokens if args.mode != "idle" else None,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "nofile_limit": limit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.uname().nodename} {os.uname().machine}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "logs": str(work),
    }
    try:
        time.sleep(0.5)
        rss0, _ = _usage(gw_pids)
        cfg = {
            "url": f"ws://127.0.0.1:{gw_port}/ws/chat",
            "mode": args.mode,
            "warmup": args.warmup,
            "duration": args.duration,
            "tokens": args.tokens,
            "model": args.model,
            "heartbeat": args.heartbeat,
            "spread": args.tokens / args.tps if args.tps > 0 else 1.0,
            "churn": args.churn,
        }
        workers = start_clients(work, args.streams, args.clients, cfg)
        t_conn = time.monotonic()
        progress.show(f"connecting {args.streams:,} sockets from {args.clients} client process(es)…")
        await_ready(workers)
        report["connect_s"] = round(time.monotonic() - t_conn, 2)
        _wait(progress, "settling", time.monotonic(), time.monotonic() + 2.0)  # before reading its memory
        rss1, _ = _usage(gw_pids)
        if not args.churn:
            report["gateway_rss_before_mb"] = round(rss0 / 2**20, 1)
            report["gateway_rss_connected_mb"] = round(rss1 / 2**20, 1)
            report["memory_per_socket_kb"] = round((rss1 - rss0) / max(1, args.streams) / 1024, 2)
        t0 = time.monotonic() + 0.3
        go(workers, t0)
        w0, w1 = t0 + args.warmup, t0 + args.warmup + args.duration
        _wait(progress, "warm-up  ", t0, w0)
        _, c0 = _usage(gw_pids)
        u0 = procstat.cpu_seconds(up.pid)
        s0 = _sched_all(gw_pids)
        samples: list[tuple[float, int]] = []
        next_sample = time.monotonic()
        while (now := time.monotonic()) < w1:
            if now >= next_sample:  # a memory sample every --sample-every seconds
                samples.append((now - w0, _usage(gw_pids)[0]))
                next_sample = now + args.sample_every
            progress.bar("measuring", now - w0, args.duration)
            time.sleep(max(0.0, min(0.25, next_sample - now, w1 - now)))
        progress.show("collecting the clients' figures…")
        _, c1 = _usage(gw_pids)
        u1 = procstat.cpu_seconds(up.pid)
        s1 = _sched_all(gw_pids)
        rss_end, _ = _usage(gw_pids)
        results = collect(workers, work, args.warmup + args.duration + 120)
    finally:
        progress.clear()
        for w in workers:
            if w.poll() is None:
                w.kill()
        _stop(gw)
        _stop(up)
    hist: dict[str, dict[int, int]] = {k: {} for k in ("added_ttft", "relay", "gap", "lag")}
    totals: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in results:
        for k in hist:
            _merge(hist[k], r[k])
        for k in ("tokens", "generations", "errors", "closed", "connect_errors", "open_at_end"):
            totals[k] += r[k]
        errors.update(r["errors_by_kind"])
    tokens = totals["tokens"]
    report.update(
        {
            "tokens_relayed": tokens,
            "tokens_per_s": round(tokens / args.duration, 1),
            "generations": totals["generations"],
            "errors": totals["errors"] + totals["connect_errors"],
            "errors_by_kind": dict(errors),
            "sockets_closed_unexpectedly": totals["closed"],
            "sockets_open_at_end": totals["open_at_end"],
            "gateway_cpu_s": round(c1 - c0, 2),
            "gateway_cpu_pct": round((c1 - c0) / args.duration * 100, 1),
            "upstream_cpu_pct": round((u1 - u0) / args.duration * 100, 1),
            # > a few % means the gateway wanted a CPU and had to wait: the machine, not the gateway, is the limit
            "gateway_runqueue_wait_pct": round((s1[1] - s0[1]) / args.duration * 100, 1),
            "client_cpu_s_total": round(sum(r["cpu_s"] for r in results), 1),
            "gateway_cpu_us_per_token": round((c1 - c0) / tokens * 1e6, 2) if tokens else None,
            "added_ttft_ms": _hist_summary(hist["added_ttft"]),
            "relay_latency_ms": _hist_summary(hist["relay"]),
            "added_gap_ms": _hist_summary(hist["gap"]),
            "client_loop_lag_ms": _hist_summary(hist["lag"]),
            "gateway_rss_end_mb": round(rss_end / 2**20, 1),
        }
    )
    if len(samples) >= 3:
        xs = [s[0] / 60 for s in samples]
        ys = [s[1] / 2**20 for s in samples]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
        report["rss_growth_mb_per_min"] = round(slope, 3)
        report["rss_samples_mb"] = [(round(s[0], 1), round(s[1] / 2**20, 1)) for s in samples]
    return report


def _children(pid: int) -> list[int]:
    """The worker processes of a ``serve --workers`` supervisor."""
    try:
        return procstat.children(pid) or [pid]
    except OSError:
        return [pid]


def _summed(read: Callable[[int], tuple[float, float]], pids: list[int]) -> tuple[float, float]:
    """A pair of /proc figures summed over the gateway's processes (0 for one that is gone)."""
    a, b = 0.0, 0.0
    for pid in pids:
        try:
            x, y = read(pid)
        except OSError:
            continue
        a, b = a + x, b + y
    return a, b


def _usage(pids: list[int]) -> tuple[float, float]:
    """(resident bytes, CPU seconds) summed over the gateway's processes."""
    return _summed(procstat.usage, pids)


def _sched_all(pids: list[int]) -> tuple[float, float]:
    """(seconds on a CPU, seconds waiting for one) summed over the gateway's processes."""
    return _summed(procstat.schedstat, pids)


def _fmt_dist(d: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    return f"p50 {f(d['p50'])}  p90 {f(d['p90'])}  p99 {f(d['p99'])}  max {f(d['max'])} ms  (n={d['n']:,})"


def render(r: dict[str, Any]) -> str:
    lines = [
        f"tokenwire loadtest — {r['mode']}: {r['streams']:,} sockets from {r['clients']} client processes, "
        f"{r['duration_s']} s measured after {r['warmup_s']} s warm-up ({r['date']}, {r['machine']}; "
        f"gateway: {r.get('gateway_workers', 1)} process(es), {r.get('event_loop', 'asyncio')}"
        + "".join(f", {pair}" for pair in r.get("gateway_settings", []))
        + ")",
    ]
    if "memory_per_socket_kb" in r:
        lines.append(
            f"  gateway memory: {r['gateway_rss_before_mb']} MB -> {r['gateway_rss_connected_mb']} MB with all sockets "
            f"open = {r['memory_per_socket_kb']} KB per socket (connect took {r['connect_s']} s)"
        )
    if r["mode"] != "idle":
        lines += [
            f"  tokens relayed: {r['tokens_relayed']:,} ({r['tokens_per_s']:,.0f}/s), "
            f"generations {r['generations']:,}, errors {r['errors']} {r['errors_by_kind'] or ''}",
            f"  gateway CPU: {r['gateway_cpu_us_per_token']} us/token ({r['gateway_cpu_pct']} % of a core; "
            f"waiting for a CPU {r['gateway_runqueue_wait_pct']} % of the time); upstream {r['upstream_cpu_pct']} %",
            f"  added TTFT:         {_fmt_dist(r['added_ttft_ms'])}",
            f"  relay latency:      {_fmt_dist(r['relay_latency_ms'])}",
            f"  added gap:          {_fmt_dist(r['added_gap_ms'])}",
        ]
    else:
        lines.append(
            f"  gateway CPU while idle: {r['gateway_cpu_pct']} % of a core; sockets open at the end "
            f"{r['sockets_open_at_end']:,}/{r['streams']:,}, closed early {r['sockets_closed_unexpectedly']}"
        )
    lines.append(f"  client event-loop lag: {_fmt_dist(r['client_loop_lag_ms'])}")
    if "rss_growth_mb_per_min" in r:
        lines.append(f"  gateway RSS growth: {r['rss_growth_mb_per_min']} MB/min (end {r['gateway_rss_end_mb']} MB)")
    shown = [name for name in FIGURES if any(line.lstrip().startswith(name) for line in lines[1:])]
    lines.append("what the figures mean (p50/p90/p99: of every token; n: how many):")
    lines += [f"  {name}: {FIGURES[name]}" for name in shown]
    return "\n".join(lines)


def _loop_name(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in --help, and the figures' legend kept as written."""


def add_gateway_setting(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gateway-setting",
        action="append",
        metavar="NAME=VALUE",
        help="a [server] setting of the gateway under test, e.g. gc_policy=default (repeatable; "
        "this shell's TOKENWIRE_* variables do not reach it)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = _HelpFormatter
    p.description = (
        "Runs a fake upstream, a gateway and --clients load processes on this machine and reports\n"
        "the gateway's added share of each figure. On a terminal a progress line shows each phase."
    )
    p.epilog = "the figures:\n" + "\n".join(f"  {name}: {text}" for name, text in FIGURES.items())
    p.add_argument("--mode", choices=("stream", "idle"), default="stream", help="stream tokens, or idle sockets only")
    p.add_argument("--streams", type=int, default=100, help="concurrent streams (idle: sockets)")
    p.add_argument("--tps", type=float, default=50.0, help="tokens per second per stream (upstream pace)")
    p.add_argument("--tokens", type=int, default=100, help="tokens per reply; a stream starts a new one at the end")
    p.add_argument("--ttft-ms", type=float, default=100.0, help="upstream time to first token")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument("--heartbeat", type=float, default=30.0, help="idle mode: seconds between app-level pings")
    p.add_argument("--churn", action="store_true", help="a new socket for every generation (soak)")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between gateway memory samples")
    p.add_argument("--model", default="gpt-4.1", help="model name sent (the fake upstream ignores it)")
    p.add_argument("--access-log", action="store_true", help="keep the gateway's per-request JSON log on")
    add_gateway_setting(p)
    p.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the gateway's event loop (auto: uvloop when installed, as `serve` does)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="gateway processes (serve --workers; more than 1 uses --redis-url)"
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis for --workers > 1")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON (- = stdout)")
    p.add_argument("--plot", metavar="FILE.png", help=f"write the figures as a PNG (needs {INSTALL})")
    p.add_argument("--report", metavar="FILE.html", help="write an HTML report: the figures, the text, the JSON")


def _write_figures(args: argparse.Namespace, report: dict[str, Any], text: str) -> None:
    from . import plots

    fig = plots.loadtest_figure(report)
    if args.plot:
        Path(args.plot).write_bytes(plots.png(fig))
        print(f"figure written to {args.plot}", file=sys.stderr)
    if args.report:
        page = plots.html_report(f"tokenwire loadtest {report['date']}", text, [fig], report)
        Path(args.report).write_text(page, encoding="utf-8")
        print(f"report written to {args.report}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    try:
        gateway_settings(args.gateway_setting)
    except ValueError as exc:
        print(f"tokenwire loadtest: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "plot", None) or getattr(args, "report", None):
        from .plots import MissingExtra, require

        try:
            require()  # before a run of minutes, not after it
        except MissingExtra as exc:
            print(f"tokenwire loadtest: {exc}", file=sys.stderr)
            return 2
    report = run(args)
    text = render(report)
    if args.json == "-":
        print(text, file=sys.stderr)
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(text)
        if args.json:
            Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if getattr(args, "plot", None) or getattr(args, "report", None):
        _write_figures(args, report, text)
    return 0 if report.get("errors", 0) == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2])
    else:
        parser = argparse.ArgumentParser(prog="tokenwire loadtest")
        add_arguments(parser)
        raise SystemExit(main(parser.parse_args()))
