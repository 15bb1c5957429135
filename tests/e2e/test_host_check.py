"""DNS rebinding: a page whose name re-resolves to 127.0.0.1 is refused by its Host, before anything else."""

from __future__ import annotations

import asyncio

import orjson
import pytest

CHAT = b'{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"max_tokens":3}'


async def _request(
    port: int, method: str, path: str, host: str, body: bytes = b"", **headers: str
) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close", f"Content-Length: {len(body)}"]
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        raw = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
    return int(raw.split(b" ", 2)[1]), raw.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize(
    ("method", "path", "body", "extra"),
    [
        ("GET", "/v1/models", b"", {}),
        ("POST", "/v1/chat/completions", CHAT, {"Content_Type": "application/json"}),
        ("GET", "/v1/conversations/demo", b"", {}),
        ("GET", "/", b"", {}),
        (
            "GET",
            "/ws/chat",
            b"",
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec_WebSocket_Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec_WebSocket_Version": "13",
            },
        ),
    ],
    ids=["models", "chat", "conversation", "page", "websocket"],
)
async def test_a_rebound_name_is_refused_in_open_mode(gateway, method, path, body, extra) -> None:
    port = gateway.port
    status, payload = await _request(
        port, method, path, f"evil.example:{port}", body, Origin=f"http://evil.example:{port}", **extra
    )
    assert status == 403, payload[:200]
    err = orjson.loads(payload)["error"]
    assert err["code"] == "forbidden" and "evil.example" in err["message"] and "allowed_hosts" in err["message"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "app.localhost:{port}"])
async def test_loopback_names_and_addresses_pass(gateway, host) -> None:
    status, payload = await _request(gateway.port, "GET", "/v1/models", host.format(port=gateway.port))
    assert status == 200 and orjson.loads(payload)["object"] == "list"


async def test_configured_names_pass(spawn) -> None:
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": ":memory:", "TOKENWIRE_ALLOWED_HOSTS": "chat.internal"})
    assert (await _request(gw.port, "GET", "/v1/models", f"chat.internal:{gw.port}"))[0] == 200
    assert (await _request(gw.port, "GET", "/v1/models", f"other.internal:{gw.port}"))[0] == 403
