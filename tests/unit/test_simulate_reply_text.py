"""``tokenwire simulate --text``: the reply is one token repeated (pure; no processes)."""

from __future__ import annotations

from tokenwire.simulate.reply import DEFAULT_MAX_TOKENS, reply_tokens
from tokenwire.simulate.server import SimOptions, _apply_suffix


def test_text_repeats_one_token_to_the_asked_length() -> None:
    messages = [{"role": "user", "content": "hello"}]
    assert reply_tokens(messages, 5, "tok ") == ["tok "] * 5
    assert reply_tokens(messages, None, "tok ") == ["tok "] * DEFAULT_MAX_TOKENS
    assert reply_tokens(messages, 5) == reply_tokens(messages, 5, None)  # without it: the usual reply
    assert reply_tokens(messages, 5)[0] != "tok "


def test_pace_and_batch_suffixes() -> None:
    opts, model = _apply_suffix(SimOptions(), "gpt-4.1@tps=0@batch=3@pace=2.5")
    assert model == "gpt-4.1"
    assert (opts.tps, opts.batch, opts.pace_ms) == (0.0, 3, 2.5)
