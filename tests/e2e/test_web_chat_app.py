"""The chat page as a chat app, in headless Chromium against a real gateway: the conversation list (new,
switch, rename, delete; stored on the gateway), Copy / Regenerate / Edit and resend, highlighted code
blocks with Copy, and the phone layout (drawer, no sideways scroll, composer above the keyboard).

TOKENWIRE_DOCS_SCREENSHOTS=1 also writes the README's screenshots to docs/screenshots/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest
from eventually import eventually
from paths import REPO
from procs import Proc
from webutil import screenshot

from tokenwire.simulate.reply import reply_tokens

pytestmark = pytest.mark.timeout(120)

WAIT = 15_000
DESKTOP = {"width": 1100, "height": 800}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}


def expected(message: str) -> str:
    return "".join(reply_tokens([{"role": "user", "content": message}]))


def shot(page, name: str) -> None:
    path = screenshot(page, name)
    if os.environ.get("TOKENWIRE_DOCS_SCREENSHOTS"):
        (REPO / "docs" / "screenshots").mkdir(exist_ok=True)
        shutil.copy(path, REPO / "docs" / "screenshots" / f"{name}.png")


def poll(page, js: str, arg=None, timeout: float = WAIT / 1000):
    return eventually(lambda: page.evaluate(js, arg), timeout=timeout, interval=0.05, message=f"waiting for {js}")


@pytest.fixture
def open_page(browser) -> Iterator[Callable[..., object]]:
    contexts, problems = [], []

    def _open(url: str, **ctx_opts):
        ctx_opts.setdefault("viewport", DESKTOP)
        ctx = browser.new_context(**ctx_opts)
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(WAIT)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
        page.goto(url, timeout=WAIT)
        ready(page)
        return page

    yield _open
    for ctx in contexts:
        ctx.close()
    assert not problems, problems


def ready(page) -> None:
    poll(page, "() => document.querySelector('#status')?.dataset.state === 'connected'")
    poll(page, "() => document.querySelectorAll('#model option').length > 0")


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def wait_end(page, count: int) -> None:
    poll(
        page,
        "(n) => { const a = document.querySelectorAll('.msg.assistant');"
        " return a.length === n && a[n - 1].dataset.status === 'completed' && !window.tokenwireApp.current; }",
        count,
    )


def raws(page) -> list[tuple[str, str]]:
    return [tuple(x) for x in page.eval_on_selector_all(".msg", "els => els.map(e => [e.dataset.role, e.twRaw])")]


def stored(page, cid: str) -> list[tuple[str, str]]:
    body = page.evaluate("(cid) => fetch('/v1/conversations/' + cid).then(r => r.json())", cid)
    return [(m["role"], m["content"]) for m in body.get("messages", []) if m["role"] != "system"]


def listed(page) -> list[tuple[str, str]]:
    return [(c["id"], c["title"]) for c in page.evaluate("fetch('/v1/conversations').then(r => r.json())")["data"]]


def titles_shown(page) -> list[str]:
    return page.eval_on_selector_all("#conv-list .conv-open", "els => els.map(e => e.textContent)")


def wait_titles(page, want: list[str]) -> None:
    """The list is re-rendered from the gateway after each reply, so its titles settle a moment after
    the reply ends: wait for exactly these, in this order."""
    poll(
        page,
        "(want) => JSON.stringify([...document.querySelectorAll('#conv-list .conv-open')]"
        ".map(e => e.textContent)) === JSON.stringify(want)",
        want,
    )


def wait_copied(page, button: str, want: str) -> None:
    """Copy sets tokenwireApp.copied at once, but the clipboard is written after an await
    (navigator.clipboard.writeText) and the button says "Copied" only then: wait for both."""
    poll(
        page,
        "([sel, want]) => document.querySelector(sel)?.textContent === 'Copied'"
        " && navigator.clipboard.readText().then((t) => t === want)",
        [button, want],
    )


def test_conversation_list_new_switch_rename_delete(open_page, gateway: Proc) -> None:
    page = open_page(gateway.http + "/")
    assert titles_shown(page) == ["New chat"]
    send(page, "Plan a trip to Chiang Mai")
    wait_end(page, 1)
    a = page.evaluate("window.tokenwireApp.conversationId")
    poll(page, "() => document.querySelector('#conv-list .conv-open')?.textContent === 'Plan a trip to Chiang Mai'")

    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    assert titles_shown(page) == ["New chat", "Plan a trip to Chiang Mai"]
    send(page, "สวัสดี second chat")
    wait_end(page, 1)
    b = page.evaluate("window.tokenwireApp.conversationId")
    assert a != b
    wait_titles(page, ["สวัสดี second chat", "Plan a trip to Chiang Mai"])  # newest first
    assert page.get_attribute(f"#conv-list .conv[data-id='{b}']", "aria-current") == "true"
    assert listed(page) == [(b, "สวัสดี second chat"), (a, "Plan a trip to Chiang Mai")]

    # switch back: A's messages, from the gateway
    page.click(f"#conv-list .conv[data-id='{a}'] .conv-open")
    poll(page, "() => document.querySelectorAll('.msg').length === 2")
    assert raws(page) == [("user", "Plan a trip to Chiang Mai"), ("assistant", expected("Plan a trip to Chiang Mai"))]
    assert page.evaluate("localStorage.getItem('tokenwire.conversation')") == a
    send(page, "and the food?")  # it goes on in A
    wait_end(page, 2)
    assert [r for r, _ in stored(page, a)] == ["user", "assistant", "user", "assistant"]
    assert len(stored(page, b)) == 2

    # rename A inline (Enter saves)
    page.click(f"#conv-list .conv[data-id='{a}'] .conv-rename")
    page.fill("#conv-list .conv-title-input", "Chiang Mai ✈")
    page.press("#conv-list .conv-title-input", "Enter")
    poll(page, "(a) => document.querySelector(`.conv[data-id='${a}'] .conv-open`)?.textContent === 'Chiang Mai ✈'", a)
    assert dict(listed(page))[a] == "Chiang Mai ✈"
    shot(page, "chat-desktop")
    page.reload()
    ready(page)
    poll(page, "() => document.querySelectorAll('.msg').length === 4")
    wait_titles(page, ["Chiang Mai ✈", "สวัสดี second chat"])

    # delete B: the button asks once more ("Delete?"), then it is gone on the gateway too
    page.click(f"#conv-list .conv[data-id='{b}'] .conv-delete")
    assert page.inner_text(f"#conv-list .conv[data-id='{b}'] .conv-delete") == "Delete?"
    assert len(listed(page)) == 2
    page.click(f"#conv-list .conv[data-id='{b}'] .conv-delete")
    poll(page, "(b) => !document.querySelector(`.conv[data-id='${b}']`)", b)
    assert [cid for cid, _ in listed(page)] == [a]
    assert page.evaluate("(b) => fetch('/v1/conversations/' + b).then(r => r.status)", b) == 404
    # deleting the open conversation starts a new one
    page.click(f"#conv-list .conv[data-id='{a}'] .conv-delete")
    page.click(f"#conv-list .conv[data-id='{a}'] .conv-delete")
    poll(
        page,
        "() => document.querySelectorAll('.msg').length === 0"
        " && !document.querySelector(\".conv[data-id^='c_'] .conv-rename\")",
    )
    assert page.evaluate("window.tokenwireApp.conversationId") not in (a, b)
    assert listed(page) == []


def test_copy_regenerate_edit_and_resend(open_page, gateway: Proc) -> None:
    page = open_page(gateway.http + "/", permissions=["clipboard-read", "clipboard-write"])
    send(page, "first question")
    wait_end(page, 1)
    send(page, "second question")
    wait_end(page, 2)
    cid = page.evaluate("window.tokenwireApp.conversationId")

    # Copy: the message's exact Markdown source
    page.click(".msg.assistant >> nth=0 >> .actions .copy")
    wait_copied(page, ".msg.assistant .actions .copy", expected("first question"))  # the first reply's button
    assert page.evaluate("window.tokenwireApp.copied") == expected("first question")
    assert page.evaluate("navigator.clipboard.readText()") == expected("first question")
    assert page.inner_text(".msg.assistant >> nth=0 >> .actions .copy") == "Copied"

    # Regenerate: only on the last reply; the stored conversation has the question once, with one reply
    hidden = page.eval_on_selector_all(".msg.assistant .regen", "bs => bs.map(b => b.hidden)")
    assert hidden == [True, False]
    page.evaluate("document.querySelectorAll('.msg.assistant')[1].dataset.old = '1'")
    page.click(".msg.assistant >> nth=1 >> .regen")
    poll(page, "() => !document.querySelectorAll('.msg.assistant')[1]?.dataset.old")  # the old reply is gone
    wait_end(page, 2)
    assert raws(page) == [
        ("user", "first question"),
        ("assistant", expected("first question")),
        ("user", "second question"),
        ("assistant", expected("second question")),
    ]
    assert stored(page, cid) == raws(page)

    # Edit and resend the first question: everything after it is replaced
    page.click(".msg.user >> nth=0 >> .edit")
    page.fill(".msg.user .edit-box textarea", "an edited question")
    page.press(".msg.user .edit-box textarea", "Enter")
    wait_end(page, 1)
    want = [("user", "an edited question"), ("assistant", expected("an edited question"))]
    assert raws(page) == want
    assert stored(page, cid) == want
    # Escape cancels an edit
    page.click(".msg.user .edit")
    page.fill(".msg.user .edit-box textarea", "never sent")
    page.press(".msg.user .edit-box textarea", "Escape")
    assert page.locator(".edit-box").count() == 0 and raws(page) == want


def test_code_blocks_are_highlighted_and_copyable(open_page, gateway: Proc) -> None:
    page = open_page(gateway.http + "/", permissions=["clipboard-read", "clipboard-write"])
    send(page, "show me code")
    wait_end(page, 1)
    code = page.locator(".msg.assistant .body .code pre code.language-python")
    assert code.count() == 1
    assert code.locator("span.hljs-keyword").count() >= 1  # highlight.js ran
    want = 'async for token in client.stream("Explain WebSocket"):\n    print(token, end="")'
    assert code.text_content() == want
    page.click(".msg.assistant .body .code .copy-code")
    wait_copied(page, ".msg.assistant .body .code .copy-code", want)
    assert page.evaluate("navigator.clipboard.readText()") == want
    # the highlighting colours come from the vendored stylesheet (same origin, allowed by the CSP)
    colour = page.evaluate("getComputedStyle(document.querySelector('.msg.assistant .hljs-keyword')).color")
    assert colour not in ("", page.evaluate("getComputedStyle(document.querySelector('.msg.assistant .body p')).color"))


def test_phone_drawer_no_sideways_scroll_and_composer_above_keyboard(open_page, gateway: Proc) -> None:
    page = open_page(gateway.http + "/", **PHONE)
    send(page, "a phone question with a_very_long_unbroken_identifier_that_must_wrap_somewhere_nicely_ok")
    wait_end(page, 1)
    page.click("#new-chat")
    send(page, "another chat on the phone")
    wait_end(page, 1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways"
    for sel in (
        "#open-sidebar",
        "#status",
        "#model",
        "#new-chat",
        "#input",
        "#send",
        ".msg.assistant .actions",
        ".msg.assistant .code .copy-code",
    ):
        box = page.locator(sel).bounding_box()
        assert box is not None, sel
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390 + 0.5, (sel, box)
    # the code block scrolls inside itself, not the page
    pre = page.locator(".msg.assistant .code pre").bounding_box()
    assert pre["x"] + pre["width"] <= 390 + 0.5
    assert not page.is_visible("#sidebar .conv-open")  # the list is a drawer, closed
    shot(page, "chat-phone")

    page.click("#open-sidebar")
    poll(page, "() => document.body.classList.contains('sidebar-open')")
    poll(page, "() => document.querySelector('#sidebar').getBoundingClientRect().left >= 0")
    assert page.locator("#conv-list .conv").count() == 2
    box = page.locator("#sidebar").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "chat-phone-list")
    page.click("#conv-list .conv >> nth=1 >> .conv-open")  # the older chat
    poll(page, "() => !document.body.classList.contains('sidebar-open')")
    poll(page, "() => document.querySelectorAll('.msg').length === 2")
    assert page.locator(".msg.user .body").inner_text().startswith("a phone question")

    # The on-screen keyboard: Chrome shrinks the layout viewport (interactive-widget=resizes-content);
    # the composer must then still be inside it, with the input visible.
    page.click("#input")
    page.set_viewport_size({"width": 390, "height": 480})
    poll(page, "() => innerHeight === 480")
    # the page fits itself to the new height on the viewport's resize event, which comes a frame later
    poll(
        page,
        "() => { const r = document.querySelector('#composer').getBoundingClientRect();"
        " return r.top >= 0 && r.bottom <= 480.5; }",
    )
    composer = page.locator("#composer").bounding_box()
    assert composer["y"] >= 0 and composer["y"] + composer["height"] <= 480 + 0.5, composer
    assert page.locator("#input").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
