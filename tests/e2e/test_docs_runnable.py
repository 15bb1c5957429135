"""Every code block of README.md and docs/*.md marked runnable is run as written, so the docs cannot drift.

The marker is an HTML comment on the line just before the fence (GitHub does not show it):

    <!-- runnable -->                  run the block in an empty temporary directory
    <!-- runnable: gateway -->         ... with a gateway running; the block's 127.0.0.1:8000 is pointed at it
    <!-- runnable: redis -->           ... with a Redis; the block's redis://127.0.0.1:6379/0 is pointed at it
    <!-- runnable: serves -->          the block starts a gateway in the foreground: it must print
                                       "listening on http://…" and answer /healthz, then it gets SIGTERM and
                                       must exit 0 (TOKENWIRE_PORT is a free port, so the default 8000 is not taken)

Tags combine (`<!-- runnable: redis serves -->`). Fences: sh, bash (run with `bash -e`) and python.
Each block gets at most 30 s, a clean environment (no provider keys, no TOKENWIRE_* settings, HOME in the
temporary directory) and no internet: mark only blocks that need neither real keys nor the network.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from procs import start
from redisutil import new_prefix, shared_or_private

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_TIMEOUT = 30.0
TAGS = {"gateway", "redis", "serves"}
MARK = re.compile(r"^<!--\s*runnable(?::\s*([^>]*?))?\s*-->\s*$")
FENCE = re.compile(r"^```(\w+)")
_LISTEN = re.compile(r"listening on http://([\d.]+):(\d+)")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the fence
    lang: str
    tags: frozenset[str]
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def marked_blocks(path: Path) -> list[Block]:
    """The marked blocks of one Markdown file; a marker not followed by a fence is an error, not skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, text in enumerate(lines):
        m = MARK.match(text.strip())
        if not m:
            continue
        where = f"{path.relative_to(ROOT)}:{i + 1}"
        tags = frozenset((m.group(1) or "").replace(",", " ").split())
        assert tags <= TAGS, f"{where}: unknown runnable tag(s) {sorted(tags - TAGS)}"
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        assert fence, f"{where}: a runnable marker must be directly followed by a ``` fence"
        lang = fence.group(1)
        assert lang in ("sh", "bash", "python"), f"{where}: cannot run a {lang!r} block"
        body = []
        for j in range(i + 2, len(lines)):
            if lines[j].startswith("```"):
                break
            body.append(lines[j])
        else:
            raise AssertionError(f"{where}: the fence is never closed")
        blocks.append(Block(path, i + 2, lang, tags, "\n".join(body) + "\n"))
    return blocks


ALL = [b for p in DOCS for b in marked_blocks(p)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.startswith("TOKENWIRE_") and k not in ("OPENAI_BASE_URL",)
    }
    # the `tokenwire` and `python` of the interpreter running the tests (its venv), the tree under test
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["HOME"] = str(tmp)
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    return env


def healthz(host: str, port: int) -> bool:
    host = "127.0.0.1" if host == "0.0.0.0" else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, ...
            found.append(int(stat.parent.name))
    return found


def run_block(block: Block, tmp: Path, env: dict[str, str]) -> str:
    script = tmp / ("block.py" if block.lang == "python" else "block.sh")
    script.write_text(block.code, encoding="utf-8")
    argv = [sys.executable, str(script)] if block.lang == "python" else ["bash", "-e", str(script)]
    popen = subprocess.Popen(
        argv, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    out: list[str] = []
    listening = threading.Event()
    where: list[tuple[str, int]] = []

    def pump() -> None:
        assert popen.stdout is not None
        for raw in iter(popen.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            out.append(line)
            m = _LISTEN.search(line)
            if m and not listening.is_set():
                where.append((m.group(1), int(m.group(2))))
                listening.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + BLOCK_TIMEOUT
    try:
        if "serves" in block.tags:
            while not listening.wait(0.05):
                assert popen.poll() is None, f"{block.name}: exited ({popen.returncode}):\n{''.join(out)}"
                assert time.monotonic() < deadline, f"{block.name}: no 'listening on' within 30 s:\n{''.join(out)}"
            host, port = where[0]
            while not healthz(host, port):
                assert time.monotonic() < deadline, f"{block.name}: /healthz never answered:\n{''.join(out)}"
                time.sleep(0.05)
            for child in children(popen.pid):  # the server (not the shell, which then exits with its code)
                os.kill(child, signal.SIGTERM)
        try:
            rc = popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{block.name}: still running after {BLOCK_TIMEOUT:.0f} s:\n{''.join(out)}")
        reader.join(5)
        assert rc == 0, f"{block.name}: exit code {rc}:\n{''.join(out)}"
        return "".join(out)
    finally:
        try:  # whatever the block left behind (`&` jobs, workers)
            os.killpg(popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        popen.wait(5)


def test_the_docs_mark_their_runnable_blocks():
    """The marker is in use where the docs promise a working command (a renamed marker would run nothing)."""
    names = {b.path.name for b in ALL}
    assert {"README.md", "deployment.md", "client.md", "security.md"} <= names, names
    assert len(ALL) >= 8, [b.name for b in ALL]


@pytest.mark.parametrize("block", ALL, ids=[b.name for b in ALL])
def test_runnable_block(block: Block):
    with tempfile.TemporaryDirectory(prefix="twdoc-") as d:
        tmp = Path(d)
        env = clean_env(tmp)
        code = block.code
        gateway = redis = None
        try:
            if "redis" in block.tags:
                url, redis = shared_or_private()
                assert "redis://127.0.0.1:6379/0" in code, f"{block.name}: a redis block names redis://127.0.0.1:6379/0"
                code = code.replace("redis://127.0.0.1:6379/0", url)
                env["TOKENWIRE_REDIS_PREFIX"] = new_prefix()  # never the real deployment's keys
            if "serves" in block.tags:
                env["TOKENWIRE_PORT"] = str(free_port())
            if "gateway" in block.tags:
                assert "127.0.0.1:8000" in code, f"{block.name}: a gateway block talks to 127.0.0.1:8000"
                gateway = start(["serve", "--port", "0"], env={"TOKENWIRE_DB": ":memory:"}, cwd=tmp)
                code = code.replace("127.0.0.1:8000", f"127.0.0.1:{gateway.port}")
            run_block(Block(block.path, block.line, block.lang, block.tags, code), tmp, env)
        finally:
            if gateway is not None:
                gateway.stop()
            if redis is not None:
                redis.stop()
