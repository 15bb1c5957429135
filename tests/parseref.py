"""Independent, deliberately simple readings of the recorded provider streams, and the drivers that feed
them to the parsers: shared by the unit, exhaustive and e2e tests."""

from __future__ import annotations

import json
import re

from tokenwire.protocol.sse import SSEDecoder
from tokenwire.upstream.openai import OpenAIStreamParser


def reference_events(raw: bytes) -> list[tuple[str, bytes]]:
    """A deliberately simple, independent reading of a whole (unsplit) event stream."""
    events = []
    for block in re.split(rb"(?:\r\n|\r|\n){2}", raw):
        name, data = "message", []
        for line in re.split(rb"\r\n|\r|\n", block):
            if line.startswith(b":") or not line:
                continue
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                data.append(value)
            elif field == b"event":
                name = value.decode()
        if data:
            events.append((name, b"\n".join(data)))
    return events


def decode_split(raw: bytes, cuts: list[int]) -> list[tuple[str, bytes]]:
    """Events of one SSEDecoder fed RAW in pieces cut at CUTS."""
    dec = SSEDecoder()
    out = []
    prev = 0
    for cut in [*cuts, len(raw)]:
        out += dec.feed(raw[prev:cut])
        prev = cut
    return out + dec.close()


def openai_events(raw: bytes, cut: int | None = None) -> tuple[list[tuple[int, object]], OpenAIStreamParser]:
    """Events of the OpenAI-compatible parser fed RAW whole, or in two pieces cut at byte CUT."""
    p = OpenAIStreamParser("test")
    out = []
    if cut is None:
        out += p.feed(raw)
    else:
        out += p.feed(raw[:cut])
        out += p.feed(raw[cut:])
    return out + p.close(), p


def openai_expected_text(raw: bytes, key: str = "content") -> str:
    """The delta KEY texts of an OpenAI-style stream, concatenated."""
    out = []
    for line in raw.decode().splitlines():  # fine here: these fixtures hold no U+2028
        if line.startswith("data:") and "[DONE]" not in line:
            chunk = json.loads(line[5:])
            for choice in chunk.get("choices") or []:
                out.append((choice.get("delta") or {}).get(key) or "")
    return "".join(out)


def data_lines(raw: bytes) -> list[tuple[str, dict]]:
    """(event name, JSON) of each event, read naively: fine for these fixtures."""
    out, name = [], "message"
    for line in raw.decode().replace("\r\n", "\n").split("\n"):
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            out.append((name, json.loads(line[5:])))
            name = "message"
    return out


def anthropic_expected(raw: bytes) -> tuple[str, str, list[tuple[int, str]]]:
    text, thinking, args = [], [], []
    for _, obj in data_lines(raw):
        delta = obj.get("delta") or {}
        if obj["type"] == "content_block_delta":
            text.append(delta.get("text", "") if delta["type"] == "text_delta" else "")
            thinking.append(delta.get("thinking", "") if delta["type"] == "thinking_delta" else "")
            if delta["type"] == "input_json_delta":
                args.append((obj["index"], delta["partial_json"]))
    return "".join(text), "".join(thinking), args


def gemini_expected(raw: bytes) -> tuple[str, dict]:
    text, usage = [], {}
    for _, obj in data_lines(raw):
        for part in obj["candidates"][0]["content"]["parts"]:
            text.append(part.get("text", ""))
        usage = obj["usageMetadata"]
    return "".join(text), usage


def run(parser_cls, raw: bytes, cuts: tuple[int, ...] = ()) -> tuple[list, object]:
    """Events of a native stream parser fed RAW in pieces cut at CUTS, and the parser."""
    p = parser_cls("test")
    out: list = []
    last = 0
    for cut in (*cuts, len(raw)):
        out += p.feed(raw[last:cut])
        last = cut
    return out + p.close(), p
