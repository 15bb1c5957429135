"""The pure HTTP/1.1 response decoder (upstream/h1.py) on the recorded provider streams, re-encoded
as chunked HTTP responses and fed at random splits: the events equal an unsplit feed of the body.
(Every single split point of every fixture: exhaustive/test_h1_every_split.py.)"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from h1util import HEAD, STREAMS, chunked, decode, parser_for, plain, reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paths import FIXTURES

from tokenwire.protocol import events as ev
from tokenwire.upstream.base import retry_after_seconds
from tokenwire.upstream.h1 import H1Error, H1Response, encode_request
from tokenwire.upstream.openai import OpenAIStreamParser


@pytest.mark.parametrize("name", STREAMS)
def test_a_whole_chunked_response_gives_the_body_s_events(name: str) -> None:
    body = (FIXTURES / name).read_bytes()
    resp, events = decode(name, chunked(body, [64]), [])
    assert resp.status == 200 and resp.complete and resp.keep_alive and resp.is_event_stream
    assert events == reference(name) and events


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(STREAMS),
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 200_000), max_size=40),
    extensions=st.booleans(),
)
def test_chunked_responses_split_anywhere_decode_as_unsplit(name, sizes, cuts, extensions) -> None:
    wire = chunked((FIXTURES / name).read_bytes(), sizes, extensions)
    resp, events = decode(name, wire, [c % (len(wire) + 1) for c in cuts])
    assert resp.complete and events == reference(name)


@pytest.mark.parametrize("name", ["openai-chat-basic.sse", "anthropic-messages-basic.sse"])
def test_a_close_inside_the_framing_keeps_every_event_before_it_then_fails(name: str) -> None:
    wire = chunked((FIXTURES / name).read_bytes(), [37])
    full = reference(name)
    for cut in range(len(HEAD), len(wire) - 5, 7):  # never the last chunk: the response is unfinished
        resp, events = decode(name, wire[:cut], [])
        resp.feed_eof("p")
        events += plain(resp.take())
        assert resp.complete and not resp.keep_alive
        *kept, last = events
        assert kept == full[: len(kept)], cut  # a prefix of the real events: nothing lost, nothing made up
        assert last[0] == ev.ERROR and last[1][0] == "upstream_error" and "mid-way" in last[1][1], cut


def test_an_error_status_keeps_its_body_headers_and_retry_after() -> None:
    raw = (FIXTURES / "openai-error-429.json").read_bytes()
    wire = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 7\r\n"
    wire += b"Content-Length: %d\r\n\r\n%s" % (len(raw), raw)
    resp, events = decode("openai", wire, [5, 40, 80])
    assert (resp.status, resp.complete, events, resp.is_event_stream) == (429, True, [], False)
    assert bytes(resp.body) == raw and retry_after_seconds(resp.headers) == 7.0
    assert resp.headers["retry-AFTER"] == "7" and "CONTENT-type" in resp.headers


def test_an_error_body_is_capped() -> None:
    resp = H1Response(OpenAIStreamParser("p"), max_body=100)
    resp.feed(b"HTTP/1.1 500 Oops\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
    assert resp.complete and bytes(resp.body) == b"x" * 100


def test_a_body_delimited_by_the_close_ends_with_it() -> None:
    body = (FIXTURES / "gemini-stream.sse").read_bytes()
    resp = H1Response(parser_for("gemini"))
    resp.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + body)
    assert not resp.complete and not resp.keep_alive
    resp.feed_eof("p")
    assert resp.complete and plain(resp.take()) == reference("gemini-stream.sse")


def test_a_gzip_stream_is_decoded() -> None:
    body = (FIXTURES / "openai-chat-usage.sse").read_bytes()
    packed = gzip.compress(body)
    wire = chunked(packed, [50]).replace(b"chunked\r\n", b"chunked\r\nContent-Encoding: gzip\r\n", 1)
    resp, events = decode("openai", wire, list(range(0, len(wire), 13)))
    assert resp.complete and events == reference("openai-chat-usage.sse")


@pytest.mark.parametrize(
    "wire",
    [
        HEAD + b"zz\r\nhello\r\n",  # a chunk size that is not hex
        b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\n\r\n",  # a coding we cannot read
        b"NOT HTTP\r\n\r\n",
    ],
)
def test_malformed_responses_are_refused(wire: bytes) -> None:
    with pytest.raises(H1Error):
        H1Response(OpenAIStreamParser("p")).feed(wire)


def test_a_request_is_one_content_length_message_and_refuses_line_breaks() -> None:
    req = encode_request("POST", "api.x:8443", "/v1/chat", {"Authorization": "Bearer k"}, b'{"a":1}')
    assert req == (
        b'POST /v1/chat HTTP/1.1\r\nHost: api.x:8443\r\nAuthorization: Bearer k\r\nContent-Length: 7\r\n\r\n{"a":1}'
    )
    with pytest.raises(ValueError, match="line break"):
        encode_request("POST", "h", "/", {"X-Key": "k\r\nEvil: 1"}, b"")


def test_fixtures_exist() -> None:
    assert len(STREAMS) >= 8 and isinstance(FIXTURES, Path)
