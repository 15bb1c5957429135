"""CPU per token of each client dialect's encoder alone, against protocol v1's.

In-process and single-threaded: the run's log is built once (``Generation.token``, the
relay's own cost, is not counted), then every encoder turns the same N token events into
bytes, best of R rounds:

    python bench/dialect_cpu.py [--tokens 20000] [--rounds 7]

The target for a new dialect: within 2 µs/token of v1. "replay" is a resumed Responses
stream (``GET /v1/responses/{id}?stream=true``), which decodes each logged event first.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from tokenwire.dialects import aisdk, aisdk_ws, anthropic_messages, openai_chat, openai_responses
from tokenwire.dialects.v1 import V1Encoder
from tokenwire.protocol.events import START, TOKEN
from tokenwire.protocol.frames import Limits
from tokenwire.protocol.stream import Generation

TOKENS = [" capital", " of", " France", " is", " Paris", ".", ' "quoted"', " naïve"]


def events(n: int) -> list[tuple[bytes, int, Any]]:
    gen = Generation("resp_6b0000000123456789abcdef01234567")
    out: list[tuple[bytes, int, Any]] = [(gen.start({"model": "m"}), START, {"model": "m"})]
    for i in range(n):
        tok = TOKENS[i % len(TOKENS)]
        out.append((gen.token(tok), TOKEN, tok))
    return out


class _Replay:
    """A resumed Responses stream: each event decoded from its logged bytes first (another instance's run)."""

    def __init__(self, enc: openai_responses.ResponsesEncoder) -> None:
        self.enc = enc

    def encode(self, rest: bytes, kind: int, value: Any) -> bytes | None:
        kind, value = openai_responses.decode_rest(rest)
        return self.enc.encode(rest, kind, value)


class _AISDKSocket:
    """As server.aisdk_ws's subscriber calls the framer: ``token`` for a token, ``encode`` otherwise."""

    def __init__(self) -> None:
        self.framer = aisdk_ws.ChunkFramer("req_bench", "msg_bench")

    def encode(self, rest: bytes, kind: int, value: Any) -> Any:
        if kind == TOKEN and value is not None:
            frame = self.framer.token(value)
            if frame is not None:
                return frame
        return self.framer.encode(rest, kind, value)


def encoders() -> dict[str, Callable[[], Any]]:
    rid = "resp_6b0000000123456789abcdef01234567"
    echo = openai_responses.parse_request({"model": "m", "input": "x"}, Limits()).echo
    return {
        "v1": lambda: V1Encoder("c1"),
        "openai_chat (socket)": lambda: openai_chat.ChunkEncoder("s_1", "m", created=0),
        "openai_chat (SSE)": lambda: openai_chat.SSEChunkEncoder("s_1", "m"),
        "anthropic_messages (SSE)": lambda: anthropic_messages.SSEEncoder("s_1", "m", 8),
        "openai_responses (SSE)": lambda: openai_responses.ResponsesEncoder(rid, {**echo, "model": "m"}),
        "aisdk (SSE)": lambda: aisdk.SSEEncoder("msg_bench"),
        "aisdk (WebSocket)": lambda: _AISDKSocket(),
        "openai_responses replay": lambda: _Replay(openai_responses.ResponsesEncoder(rid, {**echo, "model": "m"})),
    }


def best_of(make: Callable[[], Any], evs: list[tuple[bytes, int, Any]], rounds: int) -> float:
    best = float("inf")
    n = len(evs) - 1
    for _ in range(rounds):
        encode = make().encode
        encode(*evs[0])
        encode(*evs[1])  # the first token opens the message (one-off events): not the per-token cost
        t = time.process_time()
        for rest, kind, value in evs[2:]:
            encode(rest, kind, value)
        best = min(best, (time.process_time() - t) / (n - 1) * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    evs = events(args.tokens)
    results = {name: best_of(make, evs, args.rounds) for name, make in encoders().items()}
    base = results["v1"]
    print(f"encoder CPU per token, best of {args.rounds} x {args.tokens:,} tokens")
    for name, us in results.items():
        print(f"  {name:<24} {us:6.3f} µs/token   ({us - base:+.3f} vs v1)")


if __name__ == "__main__":
    main()
