"""The upstream wire (upstream/wire.py) over real sockets: keep-alive reuse, TLS, a close inside a
chunk, and the push path holding a fast provider back while a client does not read."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from eventually import aeventually
from rawws import Raw, text
from wsutil import WS, text_of

from tokenwire.procstat import cpu_seconds, usage
from tokenwire.simulate.reply import reply_tokens


def gateway_on(spawn, base_url: str, env: dict[str, str] | None = None, **settings: str):
    """A gateway whose OpenAI-compatible provider is ``base_url`` (a fake upstream)."""
    full = {"OPENAI_API_KEY": "sk-wire-test", "OPENAI_BASE_URL": base_url + "/v1", "TOKENWIRE_DB": ":memory:"}
    full.update({f"TOKENWIRE_{k.upper()}": v for k, v in settings.items()})
    full.update(env or {})
    return spawn("serve", "--port", "0", env=full)


async def sim_stats(sim, **kw) -> dict:
    async with aiohttp.ClientSession() as s, s.get(sim.http + "/_sim/stats", **kw) as r:
        return await r.json()


async def chat(gw, model: str, content: str, timeout: float = 20.0) -> list[dict]:
    async with await WS.connect(gw.ws) as ws:
        await ws.send({"type": "chat", "id": "c", "model": model, "content": content})
        return await ws.until_end("c", timeout=timeout)


def expected(content: str, n: int | None = None) -> str:
    tokens = reply_tokens([{"role": "user", "content": content}])
    return "".join(tokens if n is None else tokens[:n])


async def test_generations_reuse_one_upstream_connection(spawn) -> None:
    sim = spawn("simulate", "--port", "0")
    gw = gateway_on(spawn, sim.http)
    before = (await sim_stats(sim))["connections"]  # the gateway's GET /models at start-up, and this GET
    for i in range(3):
        events = await chat(gw, "gpt-4.1@tps=0", f"reuse {i}")
        assert events[-1]["status"] == "completed" and text_of(events) == expected(f"reuse {i}")
    stats = await sim_stats(sim)  # this GET is a connection of its own
    assert stats["streams"] == 3
    assert stats["connections"] - before == 1 + 1, stats  # three generations, one upstream connection


async def test_a_pooled_connection_to_a_provider_that_went_away_is_not_used(spawn) -> None:
    """The pooled connection died with its provider: the next chat dials anew and says it cannot reach it."""
    sim = spawn("simulate", "--port", "0")
    gw = gateway_on(spawn, sim.http)
    assert (await chat(gw, "gpt-4.1@tps=0", "one"))[-1]["status"] == "completed"
    sim.stop()
    events = await chat(gw, "gpt-4.1@tps=0", "two")
    assert events[-1]["status"] == "failed"
    err = next(e for e in events if e["type"] == "error")
    assert err["code"] == "upstream_unavailable", err


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (``openssl req``; the venv has no ``cryptography``)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


async def test_a_tls_upstream_streams_over_one_reused_connection(spawn, tmp_path) -> None:
    cert, key = make_cert(tmp_path)
    sim = spawn("simulate", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key))
    assert sim.http.startswith("https://")
    gw = gateway_on(spawn, sim.http, env={"SSL_CERT_FILE": str(cert)})
    ctx = ssl.create_default_context(cafile=str(cert))
    before = (await sim_stats(sim, ssl=ctx))["connections"]
    for i in range(2):
        events = await chat(gw, "gpt-4.1@tps=200", f"tls {i}")
        assert events[-1]["status"] == "completed", events[-1]
        assert text_of(events) == expected(f"tls {i}")
    stats = await sim_stats(sim, ssl=ctx)
    assert stats["streams"] == 2 and stats["connections"] - before == 1 + 1, stats  # one TLS handshake for both


async def test_a_tls_upstream_with_an_untrusted_certificate_is_refused(spawn, tmp_path) -> None:
    cert, key = make_cert(tmp_path)
    sim = spawn("simulate", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key))
    gw = gateway_on(spawn, sim.http, max_retries="0")
    events = await chat(gw, "gpt-4.1@tps=0", "untrusted")
    err = next(e for e in events if e["type"] == "error")
    assert err["code"] == "upstream_unavailable" and "CERTIFICATE_VERIFY_FAILED" in err["message"], err
    assert "sk-wire-test" not in orjson.dumps(events).decode()


async def test_a_close_inside_a_chunk_fails_after_every_token_before_it(spawn) -> None:
    sim = spawn("simulate", "--port", "0")
    gw = gateway_on(spawn, sim.http)
    events = await chat(gw, "gpt-4.1@fault=midchunk:5@tps=200", "mid chunk")
    assert text_of(events) == expected("mid chunk", 5)
    err = next(e for e in events if e["type"] == "error")
    assert err["code"] == "upstream_error" and err["retryable"] is True and "mid-way" in err["message"], err
    end = events[-1]
    assert end["status"] == "failed" and end["usage"]["completion_tokens"] == 5
    # the same cut in the Chat Completions dialect: the five deltas, then its error object
    body = {"model": "gpt-4.1@fault=midchunk:5@tps=200", "stream": True}
    body["messages"] = [{"role": "user", "content": "mid chunk"}]
    async with aiohttp.ClientSession() as s, s.post(gw.http + "/v1/chat/completions", json=body) as r:
        assert r.status == 200
        raw = await r.read()
    datas = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
    deltas = "".join(d["choices"][0]["delta"].get("content", "") for d in datas if d.get("choices"))
    assert deltas == expected("mid chunk", 5)
    assert datas[-1]["error"]["code"] == "upstream_error", datas[-1]


async def wait_idle(pid: int, timeout: float = 30.0) -> float:
    """Until the process has worked and then (almost) stopped using CPU; the CPU seconds it used."""
    start = last = cpu_seconds(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.3)  # stays: the sampling window of the CPU measurement
        now = cpu_seconds(pid)
        if now - last < 0.02 and now - start > 0.05:
            return now - start
        last = now
    raise AssertionError("the gateway kept working: the upstream is not held back while the client does not read")


async def test_a_client_that_stops_reading_pauses_the_upstream_and_resumes_losslessly(spawn) -> None:
    """The push path holds the provider back (pause_reading) while the client's buffer is full,
    and reads again once it drains: every token arrives, in order, and the gateway stays small."""
    tokens = 200_000
    fast = spawn("simulate", "--port", "0", "--fast", "--tokens", str(tokens))
    gw = gateway_on(spawn, fast.http, slow_consumer_timeout="60")
    rss0 = usage(gw.pid)[0]
    raw = await Raw.connect(gw.host, gw.port, rcvbuf=4096)
    assert raw.status == 101
    msg = {"type": "chat", "id": "h", "model": "gpt-4.1", "messages": [{"role": "user", "content": "hold"}]}
    await raw.send(text(msg))
    await wait_idle(gw.pid)  # buffers full: nothing read from the provider, nothing decoded
    held = await sim_stats(fast)
    assert held["active"] == 1 and held["completed"] == 0, held  # the provider is held mid-stream
    assert usage(gw.pid)[0] - rss0 < 40 * 1024 * 1024
    events = []
    while not events or events[-1]["type"] != "end":
        events.append(await raw.recv_json(timeout=30))
    end = events[-1]
    assert end["type"] == "end" and end["status"] == "completed", end
    toks = [e for e in events if e["type"] == "token"]
    assert len(toks) == tokens and [e["seq"] for e in events] == list(range(len(events)))
    assert "".join(e["content"] for e in toks) == "".join(reply_tokens([{"role": "user", "content": "hold"}], tokens))

    async def finished() -> dict | None:
        stats = await sim_stats(fast)
        return stats if stats["completed"] == 1 else None

    done = await aeventually(finished, timeout=10, message="the provider finished its stream")
    assert done["aborted"] == 0


SSE_REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(
        b"%x\r\n%b\r\n" % (len(e), e)
        for e in (
            b'data: {"choices":[{"delta":{"content":"ok"}}]}\n\n',
            b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
        )
    )
    + b"0\r\n\r\n"
)


async def test_a_pooled_connection_closed_by_the_provider_as_it_is_reused_is_retried_on_a_new_one() -> None:
    """The race every keep-alive client meets: the server closes an idle connection just as a request
    goes out on it. Nothing was answered, so the request is sent once more on a fresh connection."""
    from tokenwire.protocol import events as ev
    from tokenwire.upstream.base import ChatCall
    from tokenwire.upstream.http import SharedSession
    from tokenwire.upstream.openai import OpenAIProvider

    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        first = accepted == 1
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
            await reader.readexactly(length)
            if not first:
                writer.write(SSE_REPLY)
                await writer.drain()
                continue
            first = False
            writer.write(SSE_REPLY)  # the first answer, keep-alive...
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # ...then the next request on it is dropped unanswered
            writer.close()
            return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    session = SharedSession(connect_timeout=5)
    provider = OpenAIProvider("local", f"http://127.0.0.1:{port}/v1", "sk-x", session)
    try:
        for _ in range(3):
            stream = await asyncio.wait_for(provider.start(ChatCall("m", [{"role": "user", "content": "x"}])), 5)
            events = []
            while (batch := await asyncio.wait_for(stream.read(), 5)) is not None:
                events += batch
            assert events == [(ev.TOKEN, "ok"), (ev.FINISH, "stop")]
        assert accepted == 2 and session.pool.connects == 2  # the dropped request went out again, once
    finally:
        await session.aclose()
        server.close()
        await server.wait_closed()
