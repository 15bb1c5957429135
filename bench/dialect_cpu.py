"""CPU per token of each client dialect's encoder, against protocol v1's.

A run encodes each event once in v1 (``rest``); a subscriber's encoder turns it into its
client's bytes. This measures only that last step, in-process and single-threaded, for
the same tokens (the seed reply's words) in every dialect:

    python bench/dialect_cpu.py [N]

v1 is one concatenation per token; the SSE dialects serialise the token again
(``orjson.dumps``) inside their own envelope. The figure that matters is each dialect's
µs/token minus v1's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tokenwire.dialects import anthropic_messages, openai_chat
from tokenwire.dialects.v1 import V1Encoder
from tokenwire.protocol.events import END, START, TOKEN
from tokenwire.protocol.stream import Generation
from tokenwire.simulate.reply import reply_tokens

END_FIELDS = {"finish_reason": "stop", "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}}
ENCODERS: dict[str, Callable[[], object]] = {
    "v1 (WebSocket frame)": lambda: V1Encoder("c1"),
    "openai chunk (socket)": lambda: openai_chat.ChunkEncoder("s_bench", "gpt-4.1", created=0),
    "openai chat SSE": lambda: openai_chat.SSEChunkEncoder("s_bench", "gpt-4.1"),
    "anthropic messages SSE": lambda: anthropic_messages.SSEEncoder("s_bench", "claude-sonnet-4.5", 8),
}


def tokens(n: int) -> list[tuple[bytes, str]]:
    """``n`` tokens with their v1 encodings (made once: the run's cost, not the encoder's)."""
    words: list[str] = []
    while len(words) < n:
        words += reply_tokens([{"role": "user", "content": "benchmark"}], 500)
    gen = Generation("s_bench")
    gen.start({"model": "m"})
    return [(gen.token(w), w) for w in words[:n]]


def best_of(make: Callable[[], object], events: list[tuple[bytes, str]], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        enc = make()
        encode = enc.encode  # type: ignore[attr-defined]
        encode(b"", START, {})
        t = time.process_time()
        for rest, word in events:
            encode(rest, TOKEN, word)
        elapsed = time.process_time() - t
        encode(b"", END, END_FIELDS)
        best = min(best, elapsed / len(events) * 1e6)
    return best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    events = tokens(n)
    results = {name: best_of(make, events, 7) for name, make in ENCODERS.items()}
    base = "v1 (WebSocket frame)"
    v1 = results[base]
    print(f"{n} tokens, best of 7, process CPU time")
    for name, us in results.items():
        extra = "" if name == base else f"  (+{us - v1:.2f} us vs v1)"
        print(f"  {name:<24} {us:6.3f} us/token{extra}")


if __name__ == "__main__":
    main()
