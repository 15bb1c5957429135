"""The first hour: a real provider's own models, no silently ignored setting, a start-up summary that says
what is served. Real gateway and fake-upstream processes, driven with real HTTP and WebSocket clients."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from eventually import aeventually
from procs import start
from wsutil import WS


async def get_json(url: str) -> object:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def post_json(url: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        return r.status, await r.json()


def default_line(text: str) -> str:
    m = re.search(r"; default model: ([^;) ]+)", text)
    assert m, text
    return m.group(1)


def serve_fails(tmp_path: Path, args: list[str], env: dict[str, str]) -> str:
    """``tokenwire serve`` that must refuse to start: exit 2, one line, no traceback; returns the line."""
    proc = subprocess.run(
        [sys.executable, "-m", "tokenwire", "serve", "--port", "0", "--db", ":memory:", *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": os.environ.get("PYTHONPATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr, proc.stdout)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# -- 1. a real provider's models, never "*" ------------------------------------------------
async def test_local_server_without_key_lists_its_models_and_gets_the_default(spawn, sim) -> None:
    gw = spawn("serve", "--port", "0", "--db", ":memory:", env={"OPENAI_BASE_URL": sim.http + "/v1"})
    upstream = {m["id"] for m in (await get_json(sim.http + "/v1/models"))["data"]}
    listed = (await get_json(gw.http + "/v1/models"))["data"]
    assert {m["id"] for m in listed} == upstream
    assert all(m["provider"] == "openai" and m["simulated"] is False for m in listed), listed
    default = default_line(gw.text())
    assert default in upstream
    # a chat without a model goes to the local server as the default model
    status, body = await post_json(gw.http + "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 200, body
    assert body["model"] == default and body["tokenwire"]["provider"] == "openai"
    sent = await get_json(sim.http + "/_sim/requests")
    assert sent[-1]["model"] == default
    # and over the WebSocket
    async with await WS.connect(gw.ws) as ws:
        await ws.send({"type": "chat", "id": "c1", "content": "hi", "params": {"max_tokens": 3}})
        events = await ws.until_end("c1")
    assert events[0]["type"] == "start" and events[0]["model"] == default and events[0]["simulated"] is False
    assert (await get_json(sim.http + "/_sim/requests"))[-1]["model"] == default


async def test_a_keyed_provider_never_lists_a_star(spawn, sim) -> None:
    gw = spawn(
        "serve",
        "--port",
        "0",
        "--db",
        ":memory:",
        env={"OPENAI_API_KEY": "sk-test-local", "OPENAI_BASE_URL": sim.http + "/v1"},
    )
    ids = [m["id"] for m in (await get_json(gw.http + "/v1/models"))["data"]]
    assert "*" not in ids and not any("*" in i for i in ids), ids
    assert set(ids) == {m["id"] for m in (await get_json(sim.http + "/v1/models"))["data"]}
    assert "models from openai" in gw.text() and "gpt-4.1" in gw.text()


async def test_a_silent_provider_does_not_hold_start_up(spawn) -> None:
    """A server that accepts the connection and never answers GET /models: start within the time-out,
    then the configured names (here: none but the default), never "*"."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        gw = spawn("serve", "--port", "0", "--db", ":memory:", env={"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"})
        assert time.monotonic() - t0 < 15
        assert "cannot list its models" in gw.text() or "any model name" in gw.text()
        ids = [m["id"] for m in (await get_json(gw.http + "/v1/models"))["data"]]
        assert not any("*" in i for i in ids), ids


# -- 4. settings and fields that used to be ignored ----------------------------------------
def test_empty_key_is_refused(tmp_path) -> None:
    line = serve_fails(tmp_path, [], {"OPENAI_API_KEY": ""})
    assert "OPENAI_API_KEY is set but empty" in line


def test_empty_api_key_in_the_config_is_refused(tmp_path) -> None:
    cfg = tmp_path / "tw.toml"
    cfg.write_text('[providers.local]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\napi_key = ""\n')
    line = serve_fails(tmp_path, ["--config", str(cfg)], {})
    assert "[providers.local]: api_key is empty" in line


def test_unknown_default_model_is_refused_with_a_suggestion(tmp_path) -> None:
    line = serve_fails(tmp_path, [], {"TOKENWIRE_DEFAULT_MODEL": "gpt-4.2"})
    assert "default_model 'gpt-4.2' is not served" in line and 'did you mean "gpt-4.1"?' in line


async def test_misspelt_fields_are_refused_with_the_right_name(gateway) -> None:
    async with await WS.connect(gateway.ws) as ws:
        await ws.send({"type": "chat", "id": "a", "modle": "gpt-4.1", "content": "hi"})
        err = (await ws.until_end("a"))[-1]
        assert err["type"] == "error" and err["code"] == "bad_request", err
        assert '"modle"' in err["message"] and 'did you mean "model"?' in err["message"]
        await ws.send({"type": "chat", "id": "b", "content": "hi", "max_tokens": 5})
        err = (await ws.until_end("b"))[-1]
        assert err["type"] == "error" and err["code"] == "bad_request", err
        assert '"max_tokens" goes inside "params"' in err["message"]
        # the right shapes still work: v1 with params, and the two older client shapes
        await ws.send({"type": "chat", "id": "c", "content": "hi", "params": {"max_tokens": 2}})
        assert (await ws.until_end("c"))[-1]["type"] == "end"
        await ws.send({"content": "hi", "system": "Be brief."})
        await ws.send({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    status, body = await post_json(
        gateway.http + "/v1/chat/completions", {"modle": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 400 and '"modle"' in body["error"]["message"], body
    assert 'did you mean "model"?' in body["error"]["message"]


# -- 8. the start-up summary and the log ---------------------------------------------------
async def test_start_up_says_what_is_served(tmp_path) -> None:
    db = tmp_path / "conv.db"
    env = {"TOKENWIRE_DB": str(db), "TOKENWIRE_SIMULATED_SPEED": "20"}
    gw = start(["serve", "--port", "0"], env=env, cwd=tmp_path)
    try:
        text = gw.text()
        assert "simulated (simulated)" not in text
        for name in ("gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2"):
            assert name in text
        assert "models from simulated (built-in simulator, no network)" in text
        assert default_line(text) == "gpt-4.1"
        assert f"conversations: {db}" in text
        assert "API keys: not required" in text
        assert "seed" not in text.lower()
        async with aiohttp.ClientSession() as s:
            for path in ("/", "/tokenwire.js"):
                async with s.get(gw.http + path) as r:
                    assert r.status == 200
            async with s.get(gw.http + "/healthz") as r:
                assert r.status == 200
        await aeventually(lambda: '"route":"/healthz"' in gw.text(), timeout=10)
        log = gw.text()
        assert '"route":"/healthz"' in log  # the API is logged …
        assert '"route":"/"' not in log and '"route":"/tokenwire.js"' not in log  # … the page's files are not
    finally:
        gw.stop()


@pytest.mark.parametrize("with_key", [False, True])
async def test_start_up_names_the_provider_of_each_model(spawn, sim, with_key) -> None:
    env = {"OPENAI_BASE_URL": sim.http + "/v1"}
    if with_key:
        env["OPENAI_API_KEY"] = "sk-test-local"
    gw = spawn("serve", "--port", "0", "--db", ":memory:", env=env)
    line = next(li for li in gw.text().splitlines() if "listening on" in li)
    models = line.split(f"; models from openai (openai API at {sim.http}/v1): ", 1)[1].split(";", 1)[0]
    assert "gpt-4.1" in models.split(", ") and "*" not in models, line


async def test_every_log_line_is_json_redis_included(spawn, tmp_path) -> None:
    """Auth's, Redis's and the request log: one format (JSON lines), whoever logs."""
    from redisutil import RedisServer, new_prefix

    redis = RedisServer().start()
    try:
        gw = spawn(
            "serve",
            "--port",
            "0",
            env={
                "TOKENWIRE_REDIS_URL": redis.url,
                "TOKENWIRE_REDIS_PREFIX": new_prefix(),
                "TOKENWIRE_DB": str(tmp_path / "keys.db"),  # no keys: open on loopback
            },
        )
        async with aiohttp.ClientSession() as s:
            async with s.get(gw.http + "/v1/models", headers={"Host": "evil.example"}) as r:
                assert r.status == 403  # logged by tokenwire.auth
            redis.kill()

            async def degraded() -> bool:
                async with s.get(gw.http + "/healthz") as r:
                    return (await r.json())["status"] == "degraded"

            await aeventually(degraded, timeout=15, interval=0.05)
        await aeventually(lambda: '"logger":"tokenwire.redis"' in gw.text(), timeout=10)
        gw.stop()
    finally:
        redis.stop()
    records = []
    for line in gw.text().splitlines():
        if line.startswith("tokenwire listening on ") or line == "tokenwire: draining…":
            continue  # what the command prints for a person on stdout
        records.append(orjson.loads(line))  # anything else is a JSON log line
    loggers = {r.get("logger") for r in records}
    assert {"tokenwire.auth", "tokenwire.redis"} <= loggers, records
    assert all(isinstance(r["ts"], float) and r["event"] for r in records), records
