"""The admin dashboard (/admin) in headless Chromium against a real keyed gateway, under load.

Signed in with an admin key, the page's live view (the gateway's own SSE stream) shows streams
in flight rise while slow chats run and fall back to 0 when they end; a key created in the page
works for a chat and stops working once revoked from the page; a generation's detail is reachable
from its id. Without the key (or with a key that is not an admin key) /admin is refused.

TOKENWIRE_DOCS_SCREENSHOTS=1 also writes docs/admin/*.png (shown in docs/admin.md).
"""

from __future__ import annotations

import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from eventually import eventually
from paths import REPO
from procs import Proc
from secutil import create_key
from webutil import screenshot

pytestmark = pytest.mark.timeout(120)

WAIT = 15_000  # ms
DESKTOP = {"width": 1280, "height": 900}


def shot(page, name: str, *, full: bool = False) -> None:
    path = screenshot(page, name)
    if full:
        page.screenshot(path=str(path), full_page=True, timeout=10_000)
    if os.environ.get("TOKENWIRE_DOCS_SCREENSHOTS"):
        (REPO / "docs" / "admin").mkdir(exist_ok=True)
        shutil.copy(path, REPO / "docs" / "admin" / f"{name.removeprefix('admin-')}.png")


def poll(page, js: str, arg=None, timeout: float = WAIT / 1000):
    return eventually(lambda: page.evaluate(js, arg), timeout=timeout, interval=0.05, message=f"waiting for {js}")


def request(
    gw: Proc, path: str, key: str | None = None, body: dict | None = None, method: str | None = None
) -> tuple[int, dict | str, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        gw.http + path, data=orjson.dumps(body) if body is not None else None, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw, hdrs = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        status, raw, hdrs = exc.code, exc.read(), dict(exc.headers)
    try:
        return status, orjson.loads(raw), hdrs
    except orjson.JSONDecodeError:
        return status, raw.decode(), hdrs


def chat(gw: Proc, key: str, max_tokens: int = 20, model: str = "gpt-4.1") -> tuple[int, dict]:
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "tell me a story"}]}
    status, out, _ = request(gw, "/v1/chat/completions", key, body)
    assert isinstance(out, dict), out
    return status, out


@pytest.fixture
def keyed(spawn: Callable[..., Proc], tmp_path: Path) -> Proc:
    db = tmp_path / "gw.db"
    # the simulated models, and one model whose provider is down (for the errors table)
    (tmp_path / "tokenwire.toml").write_text(
        '[providers.sim]\nkind = "simulated"\nmodels = ["gpt-4.1", "claude-sonnet-4.5"]\n\n'
        '[providers.down]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\napi_key = "sk-x"\n'
        'models = ["broken-model"]\n'
    )
    admin = create_key(db, "ops", "--admin")
    user = create_key(db, "alice")
    # real-time simulated speed: a 150-token reply takes about two seconds, long enough to be seen in flight
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": str(db), "TOKENWIRE_SIMULATED_SPEED": "1"})
    gw.admin, gw.user = admin, user  # type: ignore[attr-defined]
    return gw


@pytest.fixture
def page(browser) -> Iterator[object]:
    ctx = browser.new_context(viewport=DESKTOP)
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT)
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    refused = ("status of 401", "status of 403")  # the refusals the tests provoke
    pg.on("console", lambda m: m.type == "error" and not any(r in m.text for r in refused) and problems.append(m.text))
    yield pg
    ctx.close()
    assert not problems


def sign_in(page, gw: Proc) -> None:
    page.goto(gw.http + "/admin", timeout=WAIT)
    page.fill("#admin-key", gw.admin)  # type: ignore[attr-defined]
    page.click("#login-form button[type=submit]")
    poll(page, "() => document.querySelector('#live-status').dataset.state === 'live'")
    poll(page, "() => document.querySelector('#whoami').textContent.includes('ops')")


def test_without_an_admin_key_admin_is_refused_not_hidden(keyed: Proc) -> None:
    status, body, headers = request(keyed, "/admin")
    assert status == 401 and "Admin key needed" in body and headers.get("WWW-Authenticate", "").startswith("Bearer")
    status, body, _ = request(keyed, "/admin", keyed.user)  # type: ignore[attr-defined]
    assert status == 403 and "Admin key needed" in body
    assert request(keyed, "/admin", keyed.admin)[0] == 200  # type: ignore[attr-defined]
    for path in ("/admin/api/keys", "/admin/api/live", "/admin/api/usage", "/admin/api/stats"):
        status, body, _ = request(keyed, path)
        assert status == 401 and body["error"]["code"] == "unauthorized", (path, body)
        status, body, _ = request(keyed, path, keyed.user)  # type: ignore[attr-defined]
        assert status == 403 and body["error"]["code"] == "forbidden", (path, body)
        assert "not an admin key" in body["error"]["message"]
    status, body, _ = request(keyed, "/admin/api/keys", "tw_" + "x" * 43)
    assert status == 401 and body["error"]["message"] == "the API key is not valid"


def test_the_page_without_a_key_asks_for_one(keyed: Proc, page) -> None:
    resp = page.goto(keyed.http + "/admin", timeout=WAIT)
    assert resp.status == 401
    assert page.is_visible("#login") and not page.is_visible("#dash")
    page.fill("#admin-key", keyed.user)  # type: ignore[attr-defined]
    page.click("#login-form button[type=submit]")
    poll(page, "() => document.querySelector('#login-error').textContent.includes('not an admin key')")
    assert not page.is_visible("#dash")
    shot(page, "admin-login")


def test_live_view_shows_streams_in_flight_rise_and_fall_under_load(keyed: Proc, page) -> None:
    sign_in(page, keyed)
    # "live" is the stream's opening; its first snapshot fills the figures a moment later
    poll(page, "() => document.querySelector('#live-inflight').textContent === '0'")
    results: list[int] = []

    def one() -> None:
        results.append(chat(keyed, keyed.user, max_tokens=150)[0])  # type: ignore[attr-defined]

    seen: list[int] = []
    page.expose_function("recordInFlight", lambda n: seen.append(int(n)))
    page.evaluate(
        """() => {
          const el = document.querySelector('#live-inflight');
          new MutationObserver(() => window.recordInFlight(el.textContent))
            .observe(el, {childList: true, characterData: true, subtree: true});
        }"""
    )
    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    poll(page, "() => Number(document.querySelector('#live-inflight').textContent) >= 4")
    poll(page, "() => Number(document.querySelector('#live-tps').textContent) > 0")
    for t in threads:
        t.join(30)
    assert results == [200] * 6
    poll(page, "() => document.querySelector('#live-inflight').textContent === '0'")
    eventually(lambda: seen[-1] == 0 or None, timeout=5)  # (the page's last change reaches us through a binding)
    assert max(seen) >= 4  # it rose, then fell, in the page
    rise = seen.index(max(seen))
    assert 0 in seen[rise:]
    # the per-model table and TTFT tiles are filled from the generations that ended
    poll(page, "() => document.querySelector('#models-table').textContent.includes('gpt-4.1')")
    poll(page, "() => / m?s$/.test(document.querySelector('#live-ttft50').textContent)")
    # a generation stops counting as in flight when it begins to finish; it is among the window's ends
    # only once its on_finish hook ran, so "0 in flight" can come a snapshot (a second) before "6 ended"
    poll(page, "() => document.querySelector('#live-ended').textContent === '6 / 0'")
    assert page.inner_text("#live-ended") == "6 / 0"
    assert page.inner_text("#live-scope") == "this process"  # one process: its own figures are the gateway's
    # a provider that is down: its errors, by provider and code
    status, out = chat(keyed, keyed.user, model="broken-model")  # type: ignore[attr-defined]
    assert status >= 500, out
    code = out["error"]["code"]
    poll(page, "() => document.querySelector('#errors-table').textContent.includes('down')")
    row = page.inner_text("#errors-table tbody tr")
    assert row.split("\t")[:2] == ["down", code] and row.split("\t")[-1] == "1", row
    assert page.inner_text("#live-ended") == "7 / 1"
    shot(page, "admin-live")
    # the usage panel has alice's spend over the last hour (written when each reply ended)
    page.click("#usage-refresh")
    poll(page, "() => document.querySelector('#usage-keys').textContent.includes('alice')")
    poll(page, "() => document.querySelector('#usage-models').textContent.includes('gpt-4.1')")
    page.locator("#usage").scroll_into_view_if_needed()
    shot(page, "admin-usage")


def test_a_key_created_in_the_page_works_until_revoked_in_the_page(keyed: Proc, page) -> None:
    sign_in(page, keyed)
    page.fill("#new-name", "from-the-page")
    page.fill("#new-rpm", "100")
    page.click("#create-form button[type=submit]")
    poll(page, "() => document.querySelector('#created-key').textContent.startsWith('tw_')")
    key = page.inner_text("#created-key").strip()
    row = "#keys-table tr[data-name='from-the-page']"
    poll(page, f'() => !!document.querySelector("{row}")')
    page.locator("#keys").scroll_into_view_if_needed()
    shot(page, "admin-keys")
    status, out = chat(keyed, key)
    assert status == 200 and out["choices"][0]["message"]["content"]
    sid = out["id"].removeprefix("chatcmpl-")

    # its limits edited in place
    page.fill(f"{row} input[data-field=rpm]", "7")
    page.fill(f"{row} input[data-field=budget_usd]", "3.5")
    page.click(f"{row} button[data-action=save]")

    def edited() -> dict | None:  # the page's PATCH is under way when the click returns
        k = next(k for k in request(keyed, "/admin/api/keys", keyed.admin)[1]["data"] if k["name"] == "from-the-page")  # type: ignore[attr-defined]
        return k if k["rpm"] == 7 and k["budget_usd"] == 3.5 else None

    eventually(edited, timeout=10)

    page.click(f"{row} button[data-action=revoke]")
    poll(page, f"() => document.querySelector(\"{row}\").textContent.includes('revoked')")
    status, out = chat(keyed, key)  # at once: the gateway forgot its cached lookup
    assert status == 401 and "revoked" in out["error"]["message"]

    # the generation it ran is reachable from its id
    page.goto(keyed.http + f"/admin#gen/{sid}", timeout=WAIT)
    poll(page, "() => document.querySelector('#gen-detail').textContent.includes('first token')")
    text = page.inner_text("#gen-detail")
    assert sid in text and "from-the-page" in text and "completed" in text and "$" in text
    page.locator("#generations").scroll_into_view_if_needed()
    shot(page, "admin-generation")


def test_on_a_phone_the_dashboard_fits_the_screen(keyed: Proc, browser) -> None:
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        pg = ctx.new_page()
        pg.set_default_timeout(WAIT)
        sign_in(pg, keyed)
        assert chat(keyed, keyed.user)[0] == 200  # type: ignore[attr-defined]
        poll(pg, "() => document.querySelector('#models-table').textContent.includes('gpt-4.1')")
        # the widest tables load on their own: measure once they are filled
        poll(pg, "() => document.querySelectorAll('#keys-table tbody tr').length >= 2")
        poll(pg, "() => document.querySelector('#usage-total').textContent.length > 0")
        # nothing wider than the screen: wide tables scroll inside their own panel
        assert pg.evaluate("document.documentElement.scrollWidth") <= 390
        shot(pg, "admin-phone")
    finally:
        ctx.close()


def test_under_workers_the_page_shows_every_worker(spawn, sim, redis_url, tmp_path, browser) -> None:
    """With ``serve --workers 2`` the live view adds both workers up, and the headings say so."""
    from test_workers import workers_env

    db = tmp_path / "gw.db"
    admin = create_key(db, "ops", "--admin")
    gw = spawn(
        "serve",
        "--port",
        "0",
        "--workers",
        "2",
        env={**workers_env(sim, redis_url), "TOKENWIRE_DB": str(db)},
        timeout=40,
    )
    gw.admin = admin  # type: ignore[attr-defined]
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = ctx.new_page()
        page.set_default_timeout(WAIT)
        sign_in(page, gw)
        poll(page, "() => document.querySelector('#live-scope').textContent === 'all 2 workers'")
        assert page.inner_text("#latest-scope") == "all 2 workers"
    finally:
        ctx.close()
