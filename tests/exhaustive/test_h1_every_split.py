"""Every recorded stream as a chunked HTTP/1.1 response (small chunks, with extensions and a
trailer), cut in two at every byte: the decoder's events equal the unsplit body's. The random
multi-way splits: unit/test_h1_response.py."""

from __future__ import annotations

import pytest
from h1util import STREAMS, chunked, decode, reference
from paths import FIXTURES


@pytest.mark.parametrize("name", [n for n in STREAMS if n != "deepseek-reasoning.sse"])
def test_every_single_split_of_a_chunked_response(name: str) -> None:
    wire = chunked((FIXTURES / name).read_bytes(), [29, 3, 111], extensions=True)
    whole = reference(name)
    for cut in range(1, len(wire)):
        resp, events = decode(name, wire, [cut])
        assert resp.complete and events == whole, f"split at byte {cut}"
