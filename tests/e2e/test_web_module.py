"""tokenwire.js and markdown.js (markdown-it + highlight.js, vendored) tested inside headless Chromium against a
real gateway."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from eventually import eventually
from paths import REPO
from procs import Proc
from tcpproxy import TCPProxy

from tokenwire.simulate.reply import reply_tokens

pytestmark = pytest.mark.timeout(120)


def expected(message: str, max_tokens: int | None = None) -> str:
    return "".join(reply_tokens([{"role": "user", "content": message}], max_tokens))


@pytest.fixture
def page(browser, gateway: Proc) -> Iterator[object]:
    """A blank same-origin page (the gateway's /static/ area) to import the modules into."""
    ctx = browser.new_context()
    p = ctx.new_page()
    p.set_default_timeout(15_000)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(gateway.http + "/tokenwire.js", timeout=15_000)  # same origin, no app running
    yield p
    ctx.close()
    assert not errors, errors


MARKDOWN_CASES = [
    ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"),
    ("<img src=x onerror=alert(1)>", "<p>&lt;img src=x onerror=alert(1)&gt;</p>"),
    ("a & b \"q\" 's'", "<p>a &amp; b \"q\" 's'</p>"),
    ("**<b>x</b>** *<i>y</i>*", "<p><strong>&lt;b&gt;x&lt;/b&gt;</strong> <em>&lt;i&gt;y&lt;/i&gt;</em></p>"),
    ("`<svg onload=alert(1)>`", "<p><code>&lt;svg onload=alert(1)&gt;</code></p>"),
    (
        "```html\n<script>alert(1)</script>\n```",
        '<pre><code class="language-html" data-lang="html">&lt;script&gt;alert(1)&lt;/script&gt;</code></pre>',
    ),
    ("```\nunclosed <b>", "<pre><code>unclosed &lt;b&gt;</code></pre>"),
    ("[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>"),
    (
        '[x](https://e.example/?a="b")',
        # markdown-it percent-encodes the quotes (the old renderer escaped them): no way out of href either way
        '<p><a href="https://e.example/?a=%22b%22" target="_blank" rel="noopener noreferrer nofollow">x</a></p>',
    ),
    (
        "[x](https://e.example/a)",
        '<p><a href="https://e.example/a" target="_blank" rel="noopener noreferrer nofollow">x</a></p>',
    ),
    ("- one <b>\n- **two**", "<ul><li>one &lt;b&gt;</li><li><strong>two</strong></li></ul>"),
    ("3. c\n4. d", '<ol start="3"><li>c</li><li>d</li></ol>'),
    ("# Title <i>", "<h3>Title &lt;i&gt;</h3>"),
    ("> quote <u>", "<blockquote><p>quote &lt;u&gt;</p></blockquote>"),
    ("line one\nline two\n\nnext", "<p>line one<br>line two</p><p>next</p>"),
    ("สวัสดี **ครับ**", "<p>สวัสดี <strong>ครับ</strong></p>"),
    ("[x](JavaScript:alert(1))", "<p>[x](JavaScript:alert(1))</p>"),
    (
        "[x](data:text/html,<script>alert(1)</script>)",
        "<p>[x](data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;)</p>",
    ),
    ("[x](vbscript:msgbox)", "<p>[x](vbscript:msgbox)</p>"),
    ("[x](/relative)", "<p>[x](/relative)</p>"),
    ("<javascript:alert(1)>", "<p>&lt;javascript:alert(1)&gt;</p>"),
    (
        "![x](https://e.example/t.png)",
        '<p>!<a href="https://e.example/t.png" target="_blank" rel="noopener noreferrer nofollow">x</a></p>',
    ),
    (
        "[m](mailto:a@e.example)",
        '<p><a href="mailto:a@e.example" target="_blank" rel="noopener noreferrer nofollow">m</a></p>',
    ),
]


def test_markdown_renderer_escapes_everything(page) -> None:
    results = page.evaluate(
        """async (cases) => {
            const { renderMarkdown, escapeHtml } = await import('/static/markdown.js');
            const out = cases.map(([src]) => {
                const div = document.createElement('div');
                div.append(renderMarkdown(src, { highlight: false }));
                return div.innerHTML;
            });
            out.push(escapeHtml(`<a href="x" onclick='y'>&</a>`));
            return out;
        }""",
        MARKDOWN_CASES,
    )
    for (src, want), got in zip(MARKDOWN_CASES, results, strict=False):
        assert got == want, f"{src!r}: {got!r} != {want!r}"
    assert results[-1] == "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"


def test_highlighting_adds_only_spans_and_keeps_the_text(page) -> None:
    """With highlight.js on (as on the page), a code block gains <span class="hljs-…"> and nothing else."""
    got = page.evaluate(
        """async (cases) => {
            const { renderMarkdown } = await import('/static/markdown.js');
            const html = (src, highlight) => {
                const div = document.createElement('div');
                div.append(renderMarkdown(src, { highlight }));
                return div;
            };
            return cases.map((src) => {
                const on = html(src, true), off = html(src, false);
                const extra = [...on.querySelectorAll('*')].filter((e) => e.closest('code') && e.tagName !== 'CODE');
                return {
                    same_text: on.textContent === off.textContent,
                    extra: extra.map((e) => e.tagName + '.' + e.className),
                    attrs: [...on.querySelectorAll('*')].flatMap((e) => [...e.attributes].map((a) => a.name)),
                    code: on.querySelector('code')?.textContent,
                };
            });
        }""",
        [f"```{lang}\n{code}\n```" for lang, code in HIGHLIGHT_CASES],
    )
    for (lang, code), r in zip(HIGHLIGHT_CASES, got, strict=True):
        assert r["same_text"] and r["code"] == code, (lang, r)
        assert r["extra"], f"{lang}: nothing highlighted"
        assert all(e.startswith("SPAN.hljs") or e.startswith("SPAN.language-") for e in r["extra"]), r["extra"]
        assert set(r["attrs"]) <= {"class", "data-lang"}, r["attrs"]


HIGHLIGHT_CASES = [
    ("python", "def f(x):\n    return '<b>' + x  # comment"),
    ("html", '<script>alert(1)</script><img src=x onerror="alert(2)">'),
    ("js", "const a = `${b}</script>`;"),
    ("bash", "echo $HOME > /tmp/x"),
]


def test_streams_are_multiplexed_on_one_socket(page) -> None:
    got = page.evaluate(
        """async () => {
            const { TokenwireClient } = await import('/tokenwire.js');
            const client = new TokenwireClient();
            const one = async (text, model) => {
                let out = '';
                for await (const t of client.stream(text, { model, params: { max_tokens: 60 } })) out += t;
                return out;
            };
            const texts = await Promise.all([
                one('first', 'gpt-4.1'), one('second', 'claude-sonnet-4.5'), one('third', 'deepseek-v3.2'),
            ]);
            const stats = { ...client.stats };
            client.close();
            return { texts, stats };
        }"""
    )
    assert got["texts"] == [expected("first", 60), expected("second", 60), expected("third", 60)]
    assert got["stats"]["connects"] == 1


def test_callbacks_done_and_typed_errors(page) -> None:
    got = page.evaluate(
        """async () => {
            const { TokenwireClient, TokenwireError } = await import('/tokenwire.js');
            const client = new TokenwireClient();
            const gen = client.stream('hello', { params: { max_tokens: 10 } });
            const events = [];
            gen.on('start', (s) => events.push('start:' + s.seq));
            gen.on('token', () => events.push('token'));
            gen.on('end', (e) => events.push('end:' + e.status));
            const end = await gen.done;
            let err = null;
            try {
                for await (const _ of client.stream('x', { model: 'no-such-model' })) { /* nothing */ }
            } catch (e) {
                const isTyped = e instanceof TokenwireError;
                err = { isTyped, code: e.code, retryable: e.retryable, message: e.message };
            }
            client.close();
            return { events, end: { status: end.status, usage: end.usage, timing: !!end.timing }, text: gen.text, err };
        }"""
    )
    assert got["events"][0] == "start:0" and got["events"][-1] == "end:completed"
    assert got["events"].count("token") == 10
    assert got["text"] == expected("hello", 10)
    assert got["end"]["usage"]["completion_tokens"] == 10 and got["end"]["timing"]
    assert got["err"]["isTyped"] and got["err"]["code"] == "unknown_model" and got["err"]["retryable"] is False
    assert "gpt-4.1" in got["err"]["message"]


def test_backpressure_pauses_and_resumes_a_slow_consumer(browser, spawn, tmp_path) -> None:
    # The seed's real speed (~40 tokens/s) and a reader that takes 60 ms a token.
    slow = spawn(
        "serve", "--port", "0", env={"TOKENWIRE_DB": str(tmp_path / "bp.db"), "TOKENWIRE_SIMULATED_SPEED": "1"}
    )
    ctx = browser.new_context()
    try:
        p = ctx.new_page()
        p.goto(slow.http + "/tokenwire.js", timeout=15_000)
        got = p.evaluate(
            """async () => {
                const { TokenwireClient } = await import('/tokenwire.js');
                const client = new TokenwireClient({ highWater: 8, lowWater: 2 });
                const gen = client.stream('slow reader', { params: { max_tokens: 60 } });
                let text = '', pausedAt = null, lateWhilePaused = 0, maxPending = 0;
                const send = client._sendRaw.bind(client);
                client._sendRaw = (f) => {
                    if (f.type === 'pause') pausedAt = performance.now();
                    if (f.type === 'resume') pausedAt = null;
                    return send(f);
                };
                gen.on('token', () => {
                    // Tokens already on the wire when the pause went out may still arrive; later ones must not.
                    if (pausedAt !== null && performance.now() - pausedAt > 150) lateWhilePaused += 1;
                });
                for await (const t of gen) {
                    text += t;
                    maxPending = Math.max(maxPending, gen.pending);
                    await new Promise((r) => setTimeout(r, 60)); // a slow renderer
                }
                const stats = { ...client.stats };
                client.close();
                return { text, stats, lateWhilePaused, maxPending };
            }"""
        )
    finally:
        ctx.close()
    assert got["text"] == expected("slow reader", 60), "backpressure must not lose or repeat tokens"
    assert got["stats"]["pauses"] >= 2 and got["stats"]["resumes"] >= 2, got
    assert got["lateWhilePaused"] == 0, got
    # After a resume the provider's backlog arrives in one burst, so the queue can pass the mark
    # (by what the provider produced meanwhile), but it stays bounded.
    assert got["maxPending"] < 40, got


def test_close_removes_every_listener_and_timer(page) -> None:
    got = page.evaluate(
        """async () => {
            const { TokenwireClient } = await import('/tokenwire.js');
            const added = [], removed = [];
            const origAdd = window.addEventListener, origRemove = window.removeEventListener;
            window.addEventListener = function (t, f, o) { added.push(t); return origAdd.call(this, t, f, o); };
            window.removeEventListener = function (t, f, o) { removed.push(t); return origRemove.call(this, t, f, o); };
            const client = new TokenwireClient({ pingInterval: 50 });
            const statuses = [];
            client.onStatus((s) => statuses.push(s.state));
            await new Promise((r) => client.on('open', r));
            const gen = client.stream('to be closed', { params: { max_tokens: 2000 } });
            await new Promise((r) => gen.on('token', r));
            while (client.stats.pings < 1) await new Promise((r) => setTimeout(r, 10)); // some pings went out
            const ws = client._ws;
            client.close();
            let err = null;
            try { await gen.done; } catch (e) { err = e.code; }
            await new Promise((r) => setTimeout(r, 100)); // stays: nothing comes back (a ping was due every 50 ms)
            window.addEventListener = origAdd; window.removeEventListener = origRemove;
            return {
                added: added.sort(), removed: removed.sort(), timers: client._timers.size,
                listeners: client._listeners.size, genListeners: gen._listeners.size,
                wsState: ws.readyState,
                wsHandlers: [ws.onopen, ws.onmessage, ws.onclose, ws.onerror].filter(Boolean).length,
                generations: client.generations.size, err, statuses, pings: client.stats.pings,
                closedStatus: client.status.state,
            };
        }"""
    )
    assert got["pings"] >= 1
    assert got["added"] == got["removed"] == ["offline", "online"]
    assert got["timers"] == 0 and got["listeners"] == 0 and got["genListeners"] == 0
    assert got["wsHandlers"] == 0 and got["wsState"] in (2, 3)  # CLOSING or CLOSED
    assert got["generations"] == 0 and got["err"] == "closed"
    assert got["statuses"][-1] == "closed" and got["closedStatus"] == "closed"


def test_silent_socket_is_detected_by_ping_and_replaced(page) -> None:
    got = page.evaluate(
        """async () => {
            const { TokenwireClient } = await import('/tokenwire.js');
            const client = new TokenwireClient({ pingInterval: 150, pingTimeout: 300, backoffBase: 50 });
            const statuses = [];
            client.onStatus((s) => statuses.push(s.state));
            await new Promise((r) => client.on('open', r));
            client._ws.onmessage = null; // the connection goes silent (e.g. a dead NAT mapping)
            const reopened = await new Promise((r) => {
                client.on('open', () => r(true));
                setTimeout(() => r(false), 5000);
            });
            const stats = { ...client.stats };
            client.close();
            return { reopened, statuses, stats };
        }"""
    )
    assert got["reopened"], got
    assert got["stats"]["reconnects"] == 1 and got["stats"]["pings"] >= 1
    assert got["statuses"][:3] == ["connecting", "connected", "reconnecting"] and "connected" in got["statuses"][3:]


def test_resume_after_drop_with_the_module(browser, gateway: Proc) -> None:
    """Two generations in flight through a proxy that is cut twice: each ends equal to its reply.

    6,000 tokens (~7 s at the fixture's 20x speed) so that both are still streaming at the second
    cut however long the first re-attach takes on a loaded machine (3,000 once ended first).
    """
    with TCPProxy(gateway.port) as proxy:
        ctx = browser.new_context()
        try:
            p = ctx.new_page()
            p.goto(f"http://127.0.0.1:{proxy.port}/tokenwire.js", timeout=15_000)
            p.evaluate(
                """async () => {
                    const { TokenwireClient } = await import('/tokenwire.js');
                    const client = new TokenwireClient({ backoffBase: 100 });
                    window.client = client;
                    const statuses = [];
                    client.onStatus((s) => statuses.push(s.state));
                    window.seen = [0, 0];
                    const run = async (text, i) => {
                        let out = '';
                        const gen = client.stream(text, { params: { max_tokens: 6000 } });
                        for await (const t of gen) { out += t; window.seen[i] += 1; }
                        return out;
                    };
                    window.results = Promise.all([run('alpha', 0), run('beta', 1)]);
                    window.statuses = statuses;
                }"""
            )
            eventually(lambda: p.evaluate("window.seen.every((n) => n > 0)"), message="both replies are streaming")
            assert proxy.drop_all() >= 1
            eventually(
                lambda: p.evaluate("window.client.stats.attaches >= 2 && window.client.status.state === 'connected'"),
                timeout=10,
                message="both generations re-attached after the first cut",
            )
            assert proxy.drop_all() >= 1
            got = p.evaluate(
                "async () => ({ texts: await window.results, stats: window.client.stats, statuses: window.statuses })"
            )
            assert got["texts"] == [expected("alpha", 6000), expected("beta", 6000)]
            assert got["stats"]["reconnects"] == 2 and got["stats"]["attaches"] >= 4, got["stats"]
            assert got["statuses"].count("reconnecting") >= 2
        finally:
            ctx.close()


def test_the_docs_example_runs(page) -> None:
    """The ten-line example of docs/web.md, run as written (its import turned into import())."""
    doc = (REPO / "docs" / "web.md").read_text(encoding="utf-8")
    block = re.search(r"```html\n(.*?)```", doc, re.S).group(1)
    script = re.search(r'<script type="module">\n(.*?)</script>', block, re.S).group(1)
    assert len(script.strip().splitlines()) <= 10
    body = re.sub(r"import \{ (\w+) \} from (\"[^\"]+\");", r"const { \1 } = await import(\2);", script)
    page.evaluate("() => { const pre = document.createElement('pre'); pre.id = 'out'; document.body.append(pre); }")
    page.evaluate(f"async () => {{ {body} }}")
    text = page.inner_text("#out")
    assert text.startswith(expected("Explain WebSocket in one paragraph"))
    assert "ms to first token, $" in text
