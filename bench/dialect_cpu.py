"""Encoder CPU per token, per client dialect, against protocol v1 (in process, no sockets).

Each dialect's encoder is fed the same generation event by event (``rest`` from
``protocol.stream.Generation``, as the relay hands subscribers) and the time per token is
the best of several rounds (``time.perf_counter_ns``; the Generation's own encoding, which
every dialect shares, is done once beforehand and not counted). Also counted: a replay of
the log (``value=None``, as a resume or a Redis follower feeds an encoder).

    python bench/dialect_cpu.py --tokens 20000 --rounds 7

The target (docs/compatibility.md): every dialect within 2 µs per token of v1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from tokenwire.dialects import aisdk, aisdk_ws, openai_chat, v1
from tokenwire.protocol.events import END, START, TOKEN
from tokenwire.protocol.stream import Generation

END_FIELDS = {
    "finish_reason": "stop",
    "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    "model": "gpt-4.1",
    "provider": "openai",
    "timing": {"ttft_ms": 1.0},
}


def events(n: int) -> list[tuple[bytes, int, Any]]:
    gen = Generation("s_bench_dialect_cpu")
    out: list[tuple[bytes, int, Any]] = [(gen.start({"model": "gpt-4.1"}), START, {"model": "gpt-4.1"})]
    words = ["Hello", " world", ",", " this", " is", " a", " token", " stream", " \u00e9t\u00e9", "\n"]
    for i in range(n):
        t = words[i % len(words)]
        out.append((gen.token(t), TOKEN, t))
    out.append((gen.end("completed", END_FIELDS), END, END_FIELDS))
    return out


def _aisdk_ws() -> Callable[[bytes, int, Any], Any]:
    """As server.aisdk_ws.ChunkSubscriber calls it: ``token`` for a token, ``encode`` otherwise."""
    framer = aisdk_ws.ChunkFramer("req_bench", "msg_bench")
    token, encode = framer.token, framer.encode

    def send(rest: bytes, kind: int, value: Any) -> Any:
        if kind == TOKEN and value is not None:
            frame = token(value)
            if frame is not None:
                return frame
        return encode(rest, kind, value)

    return send


def encoders() -> dict[str, Callable[[], Callable[[bytes, int, Any], Any]]]:
    return {
        "v1 (socket)": lambda: v1.V1Encoder("c1").encode,
        "openai SSE": lambda: openai_chat.SSEChunkEncoder("s_bench", "gpt-4.1").encode,
        "aisdk SSE": lambda: aisdk.SSEEncoder("msg_bench").encode,
        "aisdk WS": _aisdk_ws,
    }


def per_token_ns(
    make: Callable[[], Callable[[bytes, int, Any], Any]], evs: list[Any], rounds: int, replay: bool
) -> float:
    best = float("inf")
    n = sum(1 for _, kind, _ in evs if kind == TOKEN)
    if replay:
        evs = [(rest, 0, None) for rest, _, _ in evs]
    for _ in range(rounds):
        encode = make()
        t0 = time.perf_counter_ns()
        for rest, kind, value in evs:
            encode(rest, kind, value)
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    evs = events(args.tokens)
    rows = {}
    for name, make in encoders().items():
        live = per_token_ns(make, evs, args.rounds, replay=False)
        replayed = per_token_ns(make, evs, args.rounds, replay=True)
        rows[name] = {"live_ns": round(live, 1), "replay_ns": round(replayed, 1)}
    base = rows["v1 (socket)"]["live_ns"]
    for row in rows.values():
        row["over_v1_us"] = round((row["live_ns"] - base) / 1000, 3)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return
    print(f"encoder CPU per token ({args.tokens} tokens, best of {args.rounds}; Python {sys.version.split()[0]})")
    print(f"{'dialect':<14}{'live ns/token':>15}{'replay ns/token':>17}{'over v1 (µs)':>14}")
    for name, row in rows.items():
        print(f"{name:<14}{row['live_ns']:>15.1f}{row['replay_ns']:>17.1f}{row['over_v1_us']:>14.3f}")


if __name__ == "__main__":
    main()
