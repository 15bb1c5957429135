"""The chat page on a keyed gateway: no retrying forever without a key, it asks for one; no console errors.

Headless Chromium (Debian's, through Playwright) at desktop and phone size against real gateways.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eventually import eventually
from procs import Proc
from secutil import create_key
from webutil import screenshot

pytestmark = pytest.mark.timeout(120)

WAIT = 15_000  # ms, Playwright waits
VIEWPORTS = {"desktop": {"width": 1100, "height": 800}, "phone": {"width": 390, "height": 844}}


@pytest.fixture
def keyed(spawn: Callable[..., Proc], tmp_path: Path) -> Proc:
    db = tmp_path / "keys.db"
    key = create_key(db, "alice")
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": str(db), "TOKENWIRE_SIMULATED_SPEED": "50"})
    gw.key = key  # type: ignore[attr-defined]
    return gw


class Watched:
    """A page with what it said on the console and the WebSockets it opened."""

    def __init__(self, page) -> None:
        self.page = page
        self.console: list[str] = []
        self.sockets: list[str] = []
        self.problems: list[str] = []
        self.responses: list[tuple[int, str]] = []
        page.on("response", lambda r: self.responses.append((r.status, r.url)))
        page.on("console", lambda m: m.type == "error" and self.console.append(f"{m.text} @ {m.location.get('url')}"))
        page.on("websocket", lambda ws: self.sockets.append(ws.url))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))

    def poll(self, js: str, arg=None, timeout: float = WAIT / 1000):
        # (Playwright's wait_for_function evaluates strings in the page, which its CSP forbids)
        return eventually(lambda: self.page.evaluate(js, arg), timeout=timeout, interval=0.05, message=js)


@pytest.fixture
def open_page(browser) -> Iterator[Callable[..., Watched]]:
    contexts = []
    pages: list[Watched] = []

    def _open(url: str, viewport: dict) -> Watched:
        ctx = browser.new_context(viewport=viewport)
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(WAIT)
        w = Watched(page)
        pages.append(w)
        page.goto(url, timeout=WAIT)
        return w

    yield _open
    for ctx in contexts:
        ctx.close()
    assert not [p for w in pages for p in w.problems]


STATUS = "() => document.querySelector('#status-text').textContent"


@pytest.mark.parametrize("size", VIEWPORTS)
def test_without_a_key_the_page_stops_says_a_key_is_needed_and_focuses_the_key_field(keyed, open_page, size) -> None:
    w = open_page(keyed.http + "/?backoff=50", VIEWPORTS[size])  # a fast backoff: retries would show at once
    w.poll("() => document.querySelector('#status-text').textContent.includes('needs an API key')")
    assert w.page.evaluate("document.activeElement.id") == "api-key"
    assert w.page.evaluate("document.getElementById('settings').open") is True
    assert w.page.is_visible("#api-key")
    assert w.page.evaluate("document.querySelector('#status').dataset.state") == "offline"
    screenshot(w.page, f"keys-needed-{size}")
    sockets, errors = len(w.sockets), len(w.console)
    # the behaviour under test is an absence: with 50 ms backoffs, 2 s would hold several retries
    time.sleep(2)
    assert len(w.sockets) == sockets == 1, w.sockets
    assert len(w.console) == errors, w.console[errors:]
    assert "reconnecting" not in w.page.evaluate(STATUS)


@pytest.mark.parametrize("size", VIEWPORTS)
def test_a_wrong_key_says_so_and_the_right_one_connects(keyed, open_page, size) -> None:
    w = open_page(keyed.http + "/?backoff=50", VIEWPORTS[size])
    w.poll("() => document.activeElement.id === 'api-key'")
    w.page.fill("#api-key", "tw_" + "x" * 40)
    w.page.dispatch_event("#api-key", "change")
    w.poll("() => document.querySelector('#status-text').textContent.includes('API key was refused')")
    assert w.page.evaluate("document.activeElement.id") == "api-key"
    assert w.page.get_attribute("#api-key", "aria-invalid") == "true"
    screenshot(w.page, f"keys-wrong-{size}")
    w.page.fill("#api-key", keyed.key)
    w.page.dispatch_event("#api-key", "change")
    w.poll("() => document.querySelector('#status').dataset.state === 'connected'")
    w.poll("() => document.querySelectorAll('#model option').length > 0")
    assert w.page.get_attribute("#api-key", "aria-invalid") is None
    w.page.fill("#input", "hello")
    w.page.press("#input", "Enter")
    w.poll("() => document.querySelector('.msg.assistant .meta')?.textContent.length > 0", timeout=30)


@pytest.mark.parametrize("path", ["/", "/tokenwire.js", "/healthz"])
@pytest.mark.parametrize("size", VIEWPORTS)
def test_a_fresh_load_of_any_page_has_no_console_error(gateway, open_page, path, size) -> None:
    w = open_page(gateway.http + path, VIEWPORTS[size])
    if path == "/":
        w.poll("() => document.querySelector('#status').dataset.state === 'connected'")
        w.poll("() => document.querySelectorAll('#model option').length > 0")
    else:  # a page without an icon of its own: the browser asks for /favicon.ico (a 404 until now), which
        # Playwright does not report as a response: the gateway's access log says when it was answered
        # (a path no route has is logged as "unmatched": so was the icon before it was served)
        asked = ('"route":"/favicon.ico"', '"route":"unmatched"')
        eventually(lambda: any(a in gateway.text() for a in asked), timeout=10, message="no icon was asked for")
        w.page.evaluate("1")  # a round trip: console events sent before it have arrived
    assert [r for r in w.responses if r[0] >= 400] == []
    assert w.console == []
