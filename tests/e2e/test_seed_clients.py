"""Seed 000's own JavaScript client and connection pool, run in Node against the gateway.

The seed text lost its template-literal backticks when the blog post was extracted
(``new WebSocket(${URL}?key=${KEY})``); :func:`repair` puts them back, mechanically,
and changes nothing else. Only the host is pointed at the test gateway.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from paths import SEEDS

from tokenwire.simulate.reply import reply_tokens

SEED = SEEDS / "000_c777597fb94e64ab.txt"
NODE = shutil.which("node")


def block(start: str, stop: str) -> str:
    text = SEED.read_text()
    return text[text.index(start) : text.index(stop)]


def repair(code: str) -> str:
    """Restore the backticks the extraction stripped from template literals."""
    out = []
    for line in code.splitlines():
        if "${" in line and "`" not in line:
            stripped = line.strip()
            if stripped.startswith(("wss://", "ws://")):
                line = line.replace(stripped, f"`{stripped}`")
            else:
                a, b = line.index("(") + 1, line.rindex(")")
                line = line[:a] + "`" + line[a:b] + "`" + line[b:]
        out.append(line)
    return "\n".join(out)


def run_node(code: str, until: str, timeout: float = 20.0) -> str:
    if NODE is None:
        pytest.fail("node is not installed (the seed clients are JavaScript)")
    proc = subprocess.Popen(
        [NODE, "--experimental-websocket", "--no-warnings", "-e", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out = b""
    deadline = time.monotonic() + timeout
    try:
        import os
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while until.encode() not in out and time.monotonic() < deadline:
            if sel.select(0.1):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
    finally:
        proc.kill()
        err = proc.communicate(timeout=5)[1]
    assert until.encode() in out, f"node output: {out!r}\nstderr: {err.decode()[-2000:]}"
    return out.decode()


def test_seed000_streaming_client_unchanged(gateway) -> None:
    code = repair(block("// WebSocket Client Setup", "Long Connection Management"))
    code = code.replace("wss://api.holysheep.ai", f"ws://127.0.0.1:{gateway.port}")
    code = code.replace('"YOUR_HOLYSHEEP_API_KEY"', '"hs_test_key"')
    expected = "".join(reply_tokens([{"role": "user", "content": "อธิบาย WebSocket แบบเข้าใจง่าย"}]))
    out = run_node(code, until=expected[-30:])
    assert expected in out  # the whole reply, in order, exactly once
    assert out.count("You said:") == 1


def test_seed000_connection_pool_unchanged(gateway) -> None:
    pool = repair(block("// Connection Pool Manager", "Benchmark: "))
    pool = pool.replace("wss://api.holysheep.ai", f"ws://127.0.0.1:{gateway.port}")
    code = (
        'const API_KEY = "hs_test_key";\n'
        + pool
        + '\nstreamChat("hello pool").then(r => console.log("RESULT " + JSON.stringify(r)));\n'
    )
    out = run_node(code, until="RESULT ")
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert result["response"] == "".join(reply_tokens([{"role": "user", "content": "hello pool"}]))
    assert result["latency"] > 0
