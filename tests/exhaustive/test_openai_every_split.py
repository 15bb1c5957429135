"""The OpenAI-compatible chunk parser on recorded provider streams, split at every byte (slow on the
67 KB DeepSeek stream). The other parser checks: unit/test_openai_parser.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from parseref import openai_events as parse
from parseref import openai_expected_text as expected_text

from tokenwire.protocol import events as ev

OPENAI_LIKE = [
    "openai-chat-basic.sse",
    "openai-chat-usage.sse",
    "openai-chat-toolcalls.sse",
    "deepseek-reasoning.sse",
    "vllm-openai.sse",
]


@pytest.mark.parametrize("name", OPENAI_LIKE)
def test_tokens_exact_at_every_split(fixtures_dir: Path, name: str) -> None:
    raw = (fixtures_dir / name).read_bytes()
    whole, parser = parse(raw)
    assert parser.done, "[DONE] seen"
    text = "".join(v for k, v in whole if k == ev.TOKEN)
    assert text == expected_text(raw)
    reasoning = "".join(v for k, v in whole if k == ev.REASONING)
    assert reasoning == expected_text(raw, "reasoning_content")
    for cut in range(1, len(raw), 7 if len(raw) > 20000 else 1):
        assert parse(raw, cut)[0] == whole, f"split at byte {cut}"
