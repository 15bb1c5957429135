"""Pure pieces that bound what hostile input costs: tokenizing, usage from providers, SSE events."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenwire.protocol.sse import SSEDecoder, SSEError
from tokenwire.runtime.relay import sane_usage
from tokenwire.simulate.reply import iter_reply_tokens, reply_tokens, tokenize

_TOKEN_RE = re.compile(r"\s*\S+|\s+")


def tokenize_by_slicing(text: str) -> list[str]:
    """The old, quadratic algorithm: the reference the linear one must match exactly."""
    out: list[str] = []
    for piece in _TOKEN_RE.findall(text):
        word = piece.lstrip()
        lead = len(piece) - len(word)
        while len(word) > 8:
            out.append(piece[: lead + 4])
            piece, word, lead = piece[lead + 4 :], word[4:], 0
        out.append(piece)
    return out


@given(st.text(alphabet=st.sampled_from("ab ก\n\t"), max_size=200))
def test_tokenize_cuts_exactly_as_before(text: str) -> None:
    assert tokenize(text) == tokenize_by_slicing(text)


def test_tokenize_is_linear_on_one_huge_word() -> None:
    pieces = tokenize("x" * 1_000_000)
    assert "".join(pieces) == "x" * 1_000_000 and len(pieces) == 250_000 - 1


def test_the_simulated_reply_is_made_lazily() -> None:
    it = iter_reply_tokens([{"role": "user", "content": "hi"}], 10**12)
    assert [next(it) for _ in range(3)] == reply_tokens([{"role": "user", "content": "hi"}], 3)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": 3},
        {"prompt_tokens": "12", "completion_tokens": "3"},
        {"prompt_tokens": 1e300, "completion_tokens": 3},
        {"prompt_tokens": True, "completion_tokens": 3},
        {"prompt_tokens": 10**12, "completion_tokens": 3},
        {"total_tokens": 7},
        ["not", "a", "dict"],
    ],
)
def test_unbelievable_usage_is_refused(usage: object) -> None:
    assert sane_usage(usage) is None


def test_believable_usage_keeps_its_counts_and_only_counted_extras() -> None:
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": "lots"},
        "prompt_cache_hit_tokens": 4,
        "service": "x",
    }
    assert sane_usage(usage) == {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
        "prompt_cache_hit_tokens": 4,
    }


def test_an_sse_event_that_never_ends_is_an_error_not_a_leak() -> None:
    dec = SSEDecoder(max_event=1000)
    with pytest.raises(SSEError, match="no blank line"):
        for _ in range(100):
            dec.feed(b"data: " + b"x" * 50 + b"\n")
    # a normal stream, read in pieces, is untouched by the check
    ok = SSEDecoder(max_event=1000)
    assert ok.feed(b"data: a\n") == [] and ok.feed(b"data: b\n\n") == [("message", b"a\nb")]


def test_a_logged_event_decodes_to_what_a_run_hands_its_subscribers() -> None:
    from tokenwire.protocol.errors import GatewayError
    from tokenwire.protocol.events import END, ERROR, REASONING, START, TOKEN, TOOL_CALL
    from tokenwire.protocol.stream import Generation, decode_event

    gen = Generation("s_decode_1")
    err = GatewayError("upstream_error", "cut", retryable=True, status=502, extra={"provider": "p"})
    logged = [
        gen.start({"model": "m"}),
        gen.token("hi"),
        gen.reasoning("hmm"),
        gen.tool_call({"index": 0, "name": "f"}),
        gen.error(err),
        gen.end("failed", {"finish_reason": "error"}),
    ]
    kinds = [decode_event(rest) for rest in logged]
    assert [k for k, _ in kinds] == [START, TOKEN, REASONING, TOOL_CALL, ERROR, END]
    assert kinds[1][1] == "hi" and kinds[2][1] == "hmm" and kinds[3][1] == {"index": 0, "name": "f"}
    back = kinds[4][1]
    assert isinstance(back, GatewayError) and (back.code, back.message, back.retryable, back.status) == (
        "upstream_error",
        "cut",
        True,
        502,
    )
    assert back.extra == {"provider": "p"} and kinds[5][1]["status"] == "failed"
