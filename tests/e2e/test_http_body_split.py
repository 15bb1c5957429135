"""A request body that arrives in several TCP segments is read whole (it was rejected as invalid JSON)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "split me"}], "max_tokens": 5}


async def _post_in_pieces(port: int, path: str, body: bytes, pieces: int, gap: float) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(head)
        await writer.drain()
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            await asyncio.sleep(gap)  # the behaviour under test: the body trickles in, segment by segment
            writer.write(body[i : i + step])
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    status = int(raw.split(b" ", 2)[1])
    return status, raw.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize(
    ("path", "body", "pieces"),
    [
        ("/v1/chat/completions", orjson.dumps(CHAT), 2),
        # a 200 KB body (a long prompt) in four pieces
        (
            "/v1/chat/completions",
            orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 200_000}]}),
            4,
        ),
        ("/v1/poll/start", orjson.dumps(CHAT), 2),
    ],
    ids=["chat-2-pieces", "chat-200KB-4-pieces", "poll-start-2-pieces"],
)
async def test_a_body_split_across_segments_is_read_whole(gateway, path: str, body: bytes, pieces: int) -> None:
    status, payload = await _post_in_pieces(gateway.port, path, body, pieces, 0.05)
    assert status == 200, payload[:300]
    if path == "/v1/chat/completions":
        reply = orjson.loads(payload)
        assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] == 5
    else:
        assert orjson.loads(payload)["id"].startswith("s_")
