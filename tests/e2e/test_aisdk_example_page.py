"""examples/aisdk-chat (useChat from @ai-sdk/react, bundled by esbuild) in headless Chromium on a real gateway.

The page is served by the example's serve.py, which forwards ``/api/*`` to the gateway.
Sync Playwright only in this module (see conftest's ``browser``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from procs import Proc

from tokenwire.simulate.reply import reply_tokens

pytestmark = pytest.mark.timeout(180)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "aisdk-chat"
WAIT = 20.0


def expected(message: str) -> str:
    return "".join(reply_tokens([{"role": "user", "content": message}], None))


@pytest.fixture(scope="module")
def built() -> Path:
    """The example's bundle (``npm ci`` and ``npm run build`` when it is missing)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed (the example page is bundled with esbuild from npm)")
    if not (EXAMPLE / "node_modules" / "@ai-sdk" / "react").is_dir():
        out = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
    out = subprocess.run([npm, "run", "build"], cwd=EXAMPLE, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return EXAMPLE / "public" / "app.js"


@pytest.fixture
def slow_gateway(spawn: Callable[..., Proc], tmp_path: Path) -> Proc:
    """Simulated models at their real speed (~40 tokens/s), so a test can act mid-reply."""
    return spawn("serve", "--port", "0", env={"TOKENWIRE_DB": str(tmp_path / "g.db"), "TOKENWIRE_SIMULATED_SPEED": "1"})


@pytest.fixture
def site(built: Path, slow_gateway: Proc) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "serve.py"), "--gateway", slow_gateway.http, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline().decode()  # type: ignore[union-attr]
        port = re.search(r":(\d+)/", line)
        assert port, line
        # with --port 0, aiohttp picks the port; serve.py prints the one it got
        yield f"http://127.0.0.1:{port.group(1)}"
    finally:
        proc.terminate()
        proc.wait(10)


def poll(page, js: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(js)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {js}")
        time.sleep(0.05)


ASSISTANT = "() => [...document.querySelectorAll('li[data-role=assistant] .text')].map(e => e.textContent).join('|')"
STATUS = "() => document.querySelector('#status')?.dataset.status"


@pytest.fixture
def page(browser, site: str):
    ctx = browser.new_context()
    problems: list[str] = []
    page = ctx.new_page()
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(site + "/?chat=page-chat-1")
    poll(page, STATUS)
    yield page
    ctx.close()
    assert not problems, problems


def test_use_chat_streams_a_reply(page) -> None:
    page.fill("#prompt", "hello from useChat")
    page.click("#send")
    want = expected("hello from useChat")
    poll(page, f"() => ({ASSISTANT})() === {want!r} && ({STATUS})() === 'ready'")
    assert "tokens" in page.inner_text("li[data-role=assistant] .usage")


def test_a_reload_mid_reply_resumes_it_exactly_once(page) -> None:
    page.fill("#prompt", "reload me")
    page.click("#send")
    poll(page, f"() => ({ASSISTANT})().length > 10 && ({STATUS})() === 'streaming'")
    page.reload()  # the messages are gone with the page; resume: true replays the running reply
    want = expected("reload me")
    poll(page, f"() => ({ASSISTANT})() === {want!r} && ({STATUS})() === 'ready'")


def test_stop_ends_the_reply_early(page) -> None:
    page.fill("#prompt", "stop me")
    page.click("#send")
    poll(page, f"() => ({ASSISTANT})().length > 10")
    page.click("#stop")
    poll(page, f"() => ({STATUS})() === 'ready'")
    got = page.evaluate(ASSISTANT)
    want = expected("stop me")
    assert want.startswith(got) and len(got) < len(want)
