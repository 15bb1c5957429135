"""An upstream response leaves no reference cycle behind (upstream/h1.py, ``H1Response.release``).

A serving process runs the cyclic collector's full passes rarely (server/heap.py), so a cycle
per reply (the response and its httptools parser holding each other) would pile up replies'
objects between them, and make each full pass (~100 ms at 1,000 streams) longer. These tests
run with the automatic collector off, so a cycle left behind shows up as objects only
``gc.collect()`` frees.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from h1util import HEAD, STREAMS, chunked, decode
from paths import FIXTURES

from tokenwire.upstream.h1 import H1Error


@pytest.fixture
def collector_off() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    gc.collect()
    try:
        yield
    finally:
        if was:
            gc.enable()


@pytest.mark.parametrize("name", STREAMS)
def test_a_finished_response_leaves_no_cycle(name: str, collector_off: None) -> None:
    resp, events = decode(name, chunked((FIXTURES / name).read_bytes(), [64]), [97, 500])
    assert resp.complete and events
    del resp, events
    assert gc.collect() == 0


def test_bytes_after_the_end_are_refused() -> None:
    resp, _ = decode(STREAMS[0], chunked((FIXTURES / STREAMS[0]).read_bytes(), [64]), [])
    resp.feed(b"")  # nothing: nothing to refuse
    with pytest.raises(H1Error, match="after the end"):  # its parser is gone, not reset for a second answer
        resp.feed(b"HTTP/1.1 200 OK\r\n")


def test_a_response_cut_or_given_up_leaves_no_cycle(collector_off: None) -> None:
    wire = chunked((FIXTURES / STREAMS[0]).read_bytes(), [64])
    cut, _ = decode(STREAMS[0], wire[: len(wire) // 2], [])
    cut.feed_eof("p")  # the connection closed inside the body
    given_up, _ = decode(STREAMS[0], wire[: len(HEAD) + 10], [])
    given_up.release()  # the client went away: the connection is aborted
    assert not given_up.complete
    del cut, given_up
    assert gc.collect() == 0
