"""The SSE decoder, driven byte by byte over every recorded provider stream. (Cut in two at every
byte: exhaustive/test_sse_every_split.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parseref import decode_split, reference_events
from paths import FIXTURES

from tokenwire.protocol.sse import SSEDecoder, SSEError

SSE_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.sse"))


def test_fixtures_present(fixtures_dir: Path) -> None:
    assert len(SSE_FIXTURES) >= 9, SSE_FIXTURES


@pytest.mark.parametrize("name", SSE_FIXTURES)
def test_every_fixture_one_byte_at_a_time(fixtures_dir: Path, name: str) -> None:
    raw = (fixtures_dir / name).read_bytes()
    assert decode_split(raw, list(range(1, len(raw)))) == reference_events(raw)


def test_gemini_crlf_events(fixtures_dir: Path) -> None:
    events = decode_split((fixtures_dir / "gemini-stream.sse").read_bytes(), [])
    texts = [json.loads(d)["candidates"][0]["content"]["parts"][0]["text"] for _, d in events]
    assert "".join(texts).startswith("The capital of France is Paris")
    assert all(b"\r" not in d for _, d in events)


def test_anthropic_named_events(fixtures_dir: Path) -> None:
    events = decode_split((fixtures_dir / "anthropic-messages-basic.sse").read_bytes(), [])
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "ping" in names and names.count("content_block_delta") == 4
    overloaded = decode_split((fixtures_dir / "anthropic-overloaded.sse").read_bytes(), [])
    assert overloaded[0][0] == "error"
    assert json.loads(overloaded[0][1])["error"]["type"] == "overloaded_error"


def test_comments_crlf_no_space_and_multiline() -> None:
    raw = b': OPENROUTER PROCESSING\r\n\r\ndata:{"a":1}\r\n\r\nevent: x\ndata: l1\ndata: l2\n\n: ping\n\n'
    assert decode_split(raw, []) == [("message", b'{"a":1}'), ("x", b"l1\nl2")]


def test_line_separator_u2028_is_not_a_line_break() -> None:
    text = "a\u2028b\u2029c\x85d"
    raw = b"data: " + json.dumps({"t": text}, ensure_ascii=False).encode() + b"\n\n"
    for cut in range(1, len(raw)):
        (event,) = decode_split(raw, [cut])
        assert json.loads(event[1])["t"] == text


def test_bom_and_lone_cr_endings() -> None:
    raw = b"\xef\xbb\xbfdata: one\r\rdata: two\r\r"
    for cut in range(len(raw)):
        assert decode_split(raw, [cut] if cut else []) == [("message", b"one"), ("message", b"two")]


def test_last_event_without_blank_line_is_kept() -> None:
    assert decode_split(b"data: a\n\ndata: tail", []) == [("message", b"a"), ("message", b"tail")]


def test_id_field_and_retry_ignored() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"id: 7\nretry: 100\ndata: x\n\n") == [("message", b"x")]
    assert dec.last_event_id == "7"


def test_endless_line_is_refused() -> None:
    dec = SSEDecoder(max_line=1000)
    dec.feed(b"data: " + b"x" * 900)
    with pytest.raises(SSEError):
        dec.feed(b"x" * 200)


def _event_boundaries(raw: bytes) -> list[int]:
    return [m.end() for m in re.finditer(rb"(?:\r\n|\r|\n){2}", raw)][:-1]


@pytest.mark.parametrize("name", SSE_FIXTURES)
def test_every_fixture_one_event_per_read(fixtures_dir: Path, name: str) -> None:
    """A read of exactly one event is what a paced provider sends, and what the fast path takes."""
    raw = (fixtures_dir / name).read_bytes()
    assert decode_split(raw, _event_boundaries(raw)) == reference_events(raw)


_line = st.binary(max_size=12).filter(lambda b: b"\n" not in b and b"\r" not in b)
_piece = st.one_of(
    st.builds(lambda v: b"data: " + v + b"\n\n", _line),
    st.builds(lambda v: b"data: " + v + b"\r\n\r\n", _line),
    # a named event in one read (Anthropic's per token); names that are not UTF-8 or empty too
    st.builds(lambda n, v: b"event: " + n + b"\ndata: " + v + b"\n\n", _line, _line),
    st.sampled_from(
        [
            b"data: x\n",
            b"data:y\n\n",
            b"event: delta\n",
            b": ping\n\n",
            b"id: 7\n",
            b"data: a\r\n\r\n",
            b"\n",
            b"event: x\ndata: a\ndata: b\n\n",
            b"event: y\nid: 3\ndata: c\n\n",
            b"event: z\r\ndata: d\n\n",
        ]
    ),
    st.sampled_from([b"data: \n\n", b"data: z\r", b"\ndata: w\n\n", b"retry: 5\n\n", b"data: [DONE]\n\n"]),
)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(_piece, max_size=12), extra=st.lists(st.integers(0, 400), max_size=6))
def test_reads_of_whole_events_decode_as_byte_by_byte(pieces: list[bytes], extra: list[int]) -> None:
    """Reads cut at the pieces' own ends (so many reads are one whole ``data:`` event) and elsewhere:
    the same events, names and data as feeding one byte at a time."""
    raw = b"".join(pieces)
    ends, at = [], 0
    for p in pieces:
        at += len(p)
        ends.append(at)
    cuts = sorted({c for c in ends[:-1] + [e % (len(raw) + 1) for e in extra] if 0 < c < len(raw)})
    assert decode_split(raw, cuts) == decode_split(raw, list(range(1, len(raw))))


@pytest.mark.parametrize(
    "read",
    [
        b"event: x\ndata: a\ndata: b\n\n",  # two data lines: joined by LF
        b"event: y\nid: 3\ndata: c\n\n",  # another field between
        b"event: \ndata: d\n\n",  # an empty name is "message"
        b"event: \xff\xfe\ndata: e\n\n",  # a name that is not UTF-8
        b"event: z\r\ndata: f\n\n",  # a CR in it
        b"event: w\ndata: \n\n",  # empty data
        b"event: v\ndata:g\n\n",  # no space after data:
        b"data: h\r\n\r\n",  # CRLF line ends (Gemini)
        b"data: i\rj\r\n\r\n",  # a lone CR inside: two lines
        b"data: k\r\ndata: l\r\n\r\n",  # two data lines
        b"data: \r\n\r\n",  # empty data
    ],
)
def test_a_read_of_one_named_event_decodes_as_byte_by_byte(read: bytes) -> None:
    """After a first read (the decoder has started), one whole read of a named event or of something
    that only looks like one: what the fast path must take, or leave to the general path."""
    raw = b"data: 0\n\n" + read + b"data: after\n\n"
    cuts = [9, 9 + len(read)]
    assert decode_split(raw, cuts) == decode_split(raw, list(range(1, len(raw))))
