"""A slow provider does not look dead: an SSE client gets its headers soon and a comment every keep-alive.

Driven over real HTTP (a raw socket, so that the time each byte arrives is what is measured) against a
gateway whose only provider is the fake upstream, which delays its first token with ``@ttft=MS``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest


def _gateway(spawn, sim, tmp_path: Path, **settings: str):
    env = {
        "OPENAI_API_KEY": "sk-test-key-never-shown",
        "OPENAI_BASE_URL": sim.http + "/v1",
        "TOKENWIRE_DB": str(tmp_path / "slow.db"),
    }
    env.update({f"TOKENWIRE_{k.upper()}": v for k, v in settings.items()})
    return spawn("serve", "--port", "0", env=env)


async def _stream(gw, model: str, deadline: float) -> tuple[float, bytes, list[tuple[float, bytes]]]:
    """POST a streamed chat; (seconds to the status line, the head, [(seconds, line) for each body line])."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    data = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "think"}], "stream": True})
    t0 = time.monotonic()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(data), data)
    )
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), deadline)
        t_head = time.monotonic() - t0
        lines: list[tuple[float, bytes]] = []
        while True:
            line = await asyncio.wait_for(reader.readline(), deadline - (time.monotonic() - t0))
            if not line:
                break
            lines.append((time.monotonic() - t0, line))
    finally:
        writer.close()
    return t_head, head, lines


def _check(t_head: float, head: bytes, lines: list[tuple[float, bytes]], ttft: float, keepalive: float) -> None:
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"text/event-stream" in head
    assert t_head < ttft / 4, f"headers came after {t_head:.1f} s, the first token is due at {ttft:g} s"
    first_data = next(t for t, line in lines if b'"content"' in line)
    assert first_data >= ttft * 0.9, f"the first token came at {first_data:.1f} s"
    comments = [t for t, line in lines if line.startswith(b": keep-alive") and t < first_data]
    assert len(comments) >= 2, f"{len(comments)} comments before the first token: {lines[:8]}"
    # one per keep-alive of silence, not a flood
    assert len(comments) <= ttft / keepalive + 1, comments
    body = b"".join(line for _t, line in lines)
    assert b"data: [DONE]" in body, body[-300:]


async def test_headers_then_a_comment_per_keepalive_before_a_slow_first_token(spawn, sim, tmp_path) -> None:
    # the issue's figures (40 s to the first token, a comment every 15 s) scaled by 1/10: 4 s and 1 s
    gw = _gateway(spawn, sim, tmp_path, sse_headers_after="0.5", sse_keepalive="1")
    t_head, head, lines = await _stream(gw, "gpt-4.1@ttft=4000@tokens=5@tps=100", deadline=20)
    _check(t_head, head, lines, ttft=4.0, keepalive=1.0)


async def test_an_immediate_upstream_error_is_still_an_http_status(spawn, sim, tmp_path) -> None:
    # the default wait for headers (1 s) leaves an upstream that refuses at once its own status
    gw = _gateway(spawn, sim, tmp_path, sse_keepalive="1", max_retries="0")
    _t, head, lines = await _stream(gw, "gpt-4.1@fault=429", deadline=20)
    assert head.startswith(b"HTTP/1.1 429"), head
    assert b"application/json" in head and b"rate" in b"".join(line for _t, line in lines).lower()


@pytest.mark.timeout(120)
async def test_the_issues_figures_40s_to_first_token_at_the_default_settings(spawn, sim, tmp_path) -> None:
    """Done-when: a 60-s SSE request to a provider 40 s from its first token gets headers and two comments first."""
    gw = _gateway(spawn, sim, tmp_path)  # the defaults: headers after 1 s, a comment every 15 s
    t_head, head, lines = await _stream(gw, "gpt-4.1@ttft=40000@tokens=5@tps=100", deadline=60)
    _check(t_head, head, lines, ttft=40.0, keepalive=15.0)
