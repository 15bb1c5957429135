"""Seed 002's chat page, served by ``python3 -m http.server`` on another port, chats with a
zero-config gateway in Chromium; the same page from another origin (``evil.example``,
resolved to 127.0.0.1 as a DNS rebinding would) is refused.

The page is taken from the seed text as it is. Two mechanical changes only: its WebSocket URL
is pointed at the test gateway's port (the blog's is 8000), and the script the extraction cut
off mid-line is closed (the reconnect's log line, the class, an instance and the ``sendMessage``
the send button calls).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from eventually import eventually
from paths import SEEDS
from webutil import CHROMIUM_ARGS, chromium_path

from tokenwire.simulate.reply import reply_tokens

SEED = SEEDS / "002_5c725f1784e1ffbc.txt"
CUT_OFF_TAIL = """console.log("Reconnecting... Attempt " + this.reconnectAttempts);
                    setTimeout(() => this.connect().catch(() => {}), 1000 * this.reconnectAttempts);
                }
            }
        }
        const client = new AIChatClient();
        client.connect().catch(() => {});
        function sendMessage() {
            const input = document.getElementById("message-input");
            client.sendMessage(input.value);
            input.value = "";
        }
    </script>
</body>
</html>
"""


def seed_page(ws_url: str) -> str:
    text = SEED.read_text()
    page = text[text.index("<!DOCTYPE html>") :]
    cut = page.rindex("console.log(")  # the line the extraction cut off
    page = page[:cut] + CUT_OFF_TAIL
    assert page.count('"ws://localhost:8000/ws/chat"') == 1
    return page.replace('"ws://localhost:8000/ws/chat"', f'"{ws_url}"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server(tmp_path: Path):
    """``python3 -m http.server`` serving ``tmp_path`` (the seed's own way to serve its page)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        eventually(up, timeout=10, message="http.server did not start")
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture(scope="module")
def rebinding_browser():
    """Chromium in which evil.example resolves to 127.0.0.1 (what a DNS rebinding achieves)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP evil.example 127.0.0.1"],
            timeout=30_000,
        )
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url: str):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    return ctx, page, dialogs


def test_the_seed_page_from_another_loopback_port_chats(rebinding_browser, gateway, http_server, tmp_path) -> None:
    (tmp_path / "index.html").write_text(seed_page(f"ws://localhost:{gateway.port}/ws/chat"))
    ctx, page, dialogs = open_page(rebinding_browser, f"http://127.0.0.1:{http_server}/index.html")
    try:
        eventually(lambda: page.evaluate("client.ws && client.ws.readyState") == 1, timeout=15, message="socket")
        page.fill("#message-input", "Hello")
        page.click("#send-btn")
        want = "".join(reply_tokens([{"role": "user", "content": "Hello"}]))
        got = eventually(
            lambda: page.evaluate(
                "document.getElementById('typing-indicator').style.display === 'none'"
                " && document.querySelector('.ai-message')?.textContent"
            ),
            timeout=20,
            message="the reply",
        )
        assert got == want
        assert page.inner_text(".user-message") == "คุณ: Hello"
        assert dialogs == []
    finally:
        ctx.close()


@pytest.mark.parametrize("ws_host", ["localhost", "evil.example"], ids=["origin", "rebound-host"])
def test_the_same_page_from_evil_example_is_refused(
    rebinding_browser, gateway, http_server, tmp_path, ws_host: str
) -> None:
    """From http://evil.example the Origin is not loopback; a socket to ws://evil.example has a
    Host that is not ours: both handshakes are refused, and nothing is chatted."""
    (tmp_path / "index.html").write_text(seed_page(f"ws://{ws_host}:{gateway.port}/ws/chat"))
    ctx, page, _ = open_page(rebinding_browser, f"http://evil.example:{http_server}/index.html")
    try:
        # the seed's client retries 5 times; each handshake is refused (never open)
        eventually(lambda: page.evaluate("client.reconnectAttempts") >= 1, timeout=15, message="a refused attempt")
        assert page.evaluate("client.ws.readyState") != 1
        page.fill("#message-input", "Hello")
        page.click("#send-btn")
        assert page.evaluate("document.querySelectorAll('.ai-message, .user-message').length") == 0
    finally:
        ctx.close()
    assert "/ws/chat" in gateway.text() and '"status":403' in gateway.text()
