"""Property: a request split at random byte positions, with random delays between the pieces, gets
the same answer as when sent whole (a real gateway process, a raw socket)."""

from __future__ import annotations

import socket
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.hostile

text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=60)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": text})
bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2"]),
        "messages": st.lists(message, min_size=0, max_size=3).map(lambda ms: [*ms, {"role": "user", "content": "q"}]),
        "max_tokens": st.integers(1, 12),
    },
    optional={"temperature": st.floats(0, 2), "user": text, "stream": st.just(False)},
)


def exchange(port: int, raw: bytes, cuts: list[int], delays: list[float]) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = 0
        for cut, delay in zip([*cuts, len(raw)], [0.0, *delays], strict=False):
            if delay:
                time.sleep(delay)  # the behaviour under test: the request trickles in, piece by piece
            sock.sendall(raw[start:cut])
            start = cut
        sock.sendall(raw[start:])
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    head, _, payload = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


def answer(status: int, payload: bytes) -> tuple[int, object]:
    """What must not depend on how the request arrived (ids, created and timing may)."""
    body = orjson.loads(payload)
    if status != 200:
        return status, body["error"]["code"]
    return status, (body["choices"][0]["message"], body["choices"][0]["finish_reason"], body["usage"], body["model"])


def request(port: int, body: bytes) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def test_a_request_split_anywhere_gets_the_answer_it_gets_whole(gateway) -> None:
    port = gateway.port

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(body=bodies, data=st.data())
    def check(body: dict, data: st.DataObject) -> None:
        raw = request(port, orjson.dumps(body))
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(raw) - 1), min_size=1, max_size=6), label="cuts")))
        delays = data.draw(st.lists(st.floats(0, 0.03), min_size=len(cuts), max_size=len(cuts)), label="delays")
        whole = answer(*exchange(port, raw, [], []))
        split = answer(*exchange(port, raw, cuts, delays))
        assert whole[0] == 200, whole
        assert split == whole

    check()
