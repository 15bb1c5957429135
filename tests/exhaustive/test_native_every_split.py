"""Anthropic and Gemini stream parsers on recorded streams split at every byte, and in three on a
grid, checked against an independent reading of each fixture (slow: ~4 s on two busy cores). The
other native-parser checks: unit/test_native_parsers.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from parseref import anthropic_expected, gemini_expected, run

from tokenwire.protocol import events as ev
from tokenwire.upstream.anthropic import AnthropicStreamParser
from tokenwire.upstream.gemini import GeminiStreamParser


@pytest.mark.parametrize("name", ["anthropic-messages-basic.sse", "anthropic-messages-tooluse.sse"])
def test_anthropic_token_exact_at_every_split(fixtures_dir: Path, name: str) -> None:
    raw = (fixtures_dir / name).read_bytes()
    whole, parser = run(AnthropicStreamParser, raw)
    assert parser.done and parser.finished
    text, thinking, args = anthropic_expected(raw)
    assert "".join(v for k, v in whole if k == ev.TOKEN) == text
    assert "".join(v for k, v in whole if k == ev.REASONING) == thinking
    for cut in range(1, len(raw)):
        assert run(AnthropicStreamParser, raw, (cut,))[0] == whole, f"split at byte {cut}"
    # three-way splits too, on a coarser grid
    for a in range(1, len(raw), 37):
        for b in range(a + 1, len(raw), 53):
            assert run(AnthropicStreamParser, raw, (a, b))[0] == whole
    # tool calls: block index -> call index 0, 1, …; fragments concatenate to the recorded JSON
    calls = [v for k, v in whole if k == ev.TOOL_CALL]
    by_block: dict[int, str] = {}
    for block, part in args:
        by_block[block] = by_block.get(block, "") + part
    joined: dict[int, str] = {}
    for c in calls:
        joined[c["index"]] = joined.get(c["index"], "") + c.get("arguments", "")
    assert list(joined.values()) == [by_block[b] for b in sorted(by_block)]
    for args_json in joined.values():
        json.loads(args_json)


def test_gemini_token_exact_at_every_split(fixtures_dir: Path) -> None:
    raw = (fixtures_dir / "gemini-stream.sse").read_bytes()
    assert b"\r\n\r\n" in raw
    whole, parser = run(GeminiStreamParser, raw)
    assert parser.finished
    text, usage = gemini_expected(raw)
    assert "".join(v for k, v in whole if k == ev.TOKEN) == text == "The capital of France is Paris.\n"
    assert [v for k, v in whole if k == ev.FINISH] == ["stop"]
    last = [v for k, v in whole if k == ev.USAGE][-1]
    assert (last["prompt_tokens"], last["completion_tokens"]) == (
        usage["promptTokenCount"],
        usage["candidatesTokenCount"],
    )
    assert (ev.MODEL, "gemini-2.0-flash-exp") in whole
    for cut in range(1, len(raw)):
        assert run(GeminiStreamParser, raw, (cut,))[0] == whole, f"split at byte {cut}"
    for a in range(1, len(raw), 11):
        for b in range(a + 1, len(raw), 13):
            assert run(GeminiStreamParser, raw, (a, b))[0] == whole
