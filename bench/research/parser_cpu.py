"""CPU per token of the upstream parser alone: msgspec typed decoding vs the orjson path.

In-process and single-threaded, so far less noisy than the end-to-end relay benchmark:

    python bench/research/parser_cpu.py
"""

from __future__ import annotations

import time

from tokenwire.upstream import openai as o

CHUNK = (
    b'data: {"id":"chatcmpl-C2J2SWobi6p4","object":"chat.completion.chunk","created":1754676772,'
    b'"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_ff25b2783a",'
    b'"choices":[{"index":0,"delta":{"content":" capital"},"logprobs":null,"finish_reason":null}],'
    b'"usage":null,"obfuscation":"Xy3"}\n\n'
)
N = 20_000


def best_of(typed: bool, repeats: int = 7) -> float:
    saved = o._decode_chunk
    if not typed:

        def refuse(data: bytes) -> object:
            raise o._DecodeError("forced onto the orjson path")

        o._decode_chunk = refuse
    try:
        best = float("inf")
        for _ in range(repeats):
            parser = o.OpenAIStreamParser("bench")
            t = time.process_time()
            for _ in range(N):
                parser.feed(CHUNK)
            best = min(best, (time.process_time() - t) / N * 1e6)
        return best
    finally:
        o._decode_chunk = saved


if __name__ == "__main__":
    plain, typed = best_of(False), best_of(True)
    print(f"orjson path : {plain:.2f} us/token")
    print(f"msgspec path: {typed:.2f} us/token ({(1 - typed / plain) * 100:.0f} % less)")
