"""Recorded provider streams re-encoded as chunked HTTP/1.1 responses, and the decoder fed them
(shared by unit/test_h1_response.py and exhaustive/test_h1_every_split.py)."""

from __future__ import annotations

from typing import Any

from paths import FIXTURES

from tokenwire.protocol import events as ev
from tokenwire.protocol.errors import GatewayError
from tokenwire.upstream.anthropic import AnthropicStreamParser
from tokenwire.upstream.base import StreamParser
from tokenwire.upstream.gemini import GeminiStreamParser
from tokenwire.upstream.h1 import H1Response
from tokenwire.upstream.openai import OpenAIStreamParser

STREAMS = sorted(p.name for p in FIXTURES.glob("*.sse"))
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"


def parser_for(name: str) -> StreamParser:
    if name.startswith("anthropic"):
        return AnthropicStreamParser("p")
    if name.startswith("gemini"):
        return GeminiStreamParser("p")
    return OpenAIStreamParser("p")


def plain(events: list[Any]) -> list[Any]:
    """Events comparable across runs (an error by its code and message)."""
    return [(k, (v.code, v.message) if isinstance(v, GatewayError) else v) for k, v in events]


def reference(name: str) -> list[Any]:
    """The body fed to the provider's parser in one piece, as the decoder must reproduce."""
    body = (FIXTURES / name).read_bytes()
    parser = parser_for(name)
    out = parser.feed(body) + parser.close()
    if not parser.done and not parser.finished:
        out.append((ev.ERROR, GatewayError("upstream_error", "p ended the stream before it finished")))
    return plain(out)


def chunked(body: bytes, sizes: list[int], extensions: bool = False) -> bytes:
    """``body`` in HTTP/1.1 chunks of the given sizes (cycled), then the last chunk and a trailer."""
    out, i, k = [], 0, 0
    while i < len(body):
        n = sizes[k % len(sizes)] if sizes else len(body)
        k += 1
        piece = body[i : i + n]
        i += n
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), b";ext=1" if extensions and k % 2 else b"", piece))
    out.append(b"0\r\nX-Trailer: yes\r\n\r\n" if extensions else b"0\r\n\r\n")
    return HEAD + b"".join(out)


def decode(name: str, wire: bytes, cuts: list[int]) -> tuple[H1Response, list[Any]]:
    resp = H1Response(parser_for(name))
    events: list[Any] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(wire)]:
        resp.feed(wire[last:cut])
        events += resp.take()
        last = cut
    return resp, plain(events)
