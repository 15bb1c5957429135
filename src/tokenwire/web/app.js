// The chat page served at "/": a thin UI over tokenwire.js and markdown.js (markdown-it + highlight.js).
// Conversations live on the gateway, per API key: GET /v1/conversations lists them, PATCH renames or
// truncates one (regenerate, edit and resend), DELETE removes it.
import { TokenwireAuthError, TokenwireClient, TokenwireError } from "/tokenwire.js";
import { renderMarkdown } from "/static/markdown.js";

const $ = (id) => document.getElementById(id);
const KEY = {
  conv: "tokenwire.conversation",
  model: "tokenwire.model",
  system: "tokenwire.system",
  maxTokens: "tokenwire.maxTokens",
  apiKey: "tokenwire.apiKey",
  pending: "tokenwire.pending",
};
const THAI = /[\u0E00-\u0E7F]/;
const NON_LATIN = /[\u0E00-\u0E7F\u3040-\u30FF\u3400-\u9FFF\uAC00-\uD7AF\u0600-\u06FF\u0400-\u04FF]/;

function storage(kind) {
  return {
    get: (k) => {
      try {
        return window[kind].getItem(k);
      } catch {
        return null;
      }
    },
    set: (k, v) => {
      try {
        if (v === null || v === "") window[kind].removeItem(k);
        else window[kind].setItem(k, v);
      } catch {
        /* private mode: keep going without persistence */
      }
    },
  };
}
const store = storage("localStorage");
const sessionStore = storage("sessionStorage"); // per tab: the reply in progress

function newConversationId() {
  const a = new Uint8Array(12);
  crypto.getRandomValues(a);
  return "c_" + Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

const ui = {
  messages: $("messages"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  model: $("model"),
  system: $("system"),
  maxTokens: $("max-tokens"),
  apiKey: $("api-key"),
  status: $("status"),
  statusText: $("status-text"),
  reconnect: $("reconnect"),
  convId: $("conv-id"),
  convList: $("conv-list"),
  sidebar: $("sidebar"),
  scrim: $("scrim"),
  openSidebar: $("open-sidebar"),
};

const freshConversation = !store.get(KEY.conv); // minted now: nothing stored to load (no 404 on a first visit)
const app = {
  client: null,
  conversationId: store.get(KEY.conv) || newConversationId(),
  current: null, // { gen, view }
  statusLog: [], // every status state, in order (tests read it)
  models: [],
  conversations: [], // [{id, title, updated}] from the gateway, newest first
  copied: null, // the last text put on the clipboard (tests read it)
};
window.tokenwireApp = app;
store.set(KEY.conv, app.conversationId);
ui.convId.textContent = app.conversationId;

function authHeaders() {
  const key = store.get(KEY.apiKey);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// ---- messages ---------------------------------------------------------------------------

let stickToBottom = true;
ui.messages.addEventListener("scroll", () => {
  const m = ui.messages;
  stickToBottom = m.scrollHeight - m.scrollTop - m.clientHeight < 80;
});

function scrollDown(force = false) {
  if (force || stickToBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
}

function setLang(node, text) {
  if (THAI.test(text)) node.lang = "th";
  else if (!NON_LATIN.test(text)) node.lang = "en";
  else node.removeAttribute("lang");
}

function addMessage(role, text = "") {
  $("empty")?.remove();
  const wrap = document.createElement("article");
  wrap.className = `msg ${role}`;
  wrap.dataset.role = role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : role === "assistant" ? "Assistant" : role;
  const body = document.createElement("div");
  body.className = "body";
  const actions = document.createElement("div");
  actions.className = "actions";
  wrap.append(who, body, actions);
  ui.messages.append(wrap);
  const view = { el: wrap, body, raw: text, role, frame: 0 };
  wrap.twView = view;
  actions.append(button("Copy", "copy", () => copyText(view.raw, actions.querySelector(".copy")), "Copy this message"));
  if (role === "user") actions.append(button("Edit", "edit", () => startEdit(view), "Edit and send again"));
  else actions.append(button("Regenerate", "regen", () => regenerate(view), "Ask for this reply again"));
  render(view);
  updateActions();
  scrollDown(true);
  return view;
}

function button(label, cls, onClick, title = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `small ${cls}`;
  b.textContent = label;
  if (title) b.title = title;
  b.addEventListener("click", onClick);
  return b;
}

/** Only the last reply can be regenerated; nothing can be edited while a reply streams. */
function updateActions() {
  const assistants = ui.messages.querySelectorAll(".msg.assistant");
  assistants.forEach((el, i) => {
    const b = el.querySelector(".regen");
    if (b) b.hidden = i !== assistants.length - 1;
  });
  for (const b of ui.messages.querySelectorAll(".msg .edit, .msg .regen")) b.disabled = Boolean(app.current);
}

async function copyText(text, btn) {
  app.copied = text;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // no clipboard permission (or not a secure context): the old way
    const ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.className = "sr-only";
    document.body.append(ta);
    ta.select();
    try {
      document.execCommand("copy");
    } catch {
      /* nothing more to try */
    }
    ta.remove();
  }
  if (btn) {
    const label = btn.textContent;
    btn.textContent = "Copied";
    btn.dataset.copied = "1";
    setTimeout(() => {
      btn.textContent = label;
      delete btn.dataset.copied;
    }, 1500);
  }
}

/** Code blocks: a Copy button over each (the block's text exactly, without the highlighting). */
function decorateCode(body) {
  for (const pre of body.querySelectorAll("pre")) {
    const box = document.createElement("div");
    box.className = "code";
    pre.replaceWith(box);
    const code = pre.querySelector("code");
    const copy = button("Copy", "copy-code", () => copyText(code ? code.textContent : pre.textContent, copy), "Copy the code");
    box.append(copy, pre);
  }
}

function render(view) {
  view.frame = 0;
  view.el.twRaw = view.raw; // the exact text received (tests compare it with the model's reply)
  if (view.role === "user") view.body.textContent = view.raw; // the user's own words, never parsed
  else {
    view.body.replaceChildren(renderMarkdown(view.raw));
    decorateCode(view.body);
  }
  setLang(view.body, view.raw);
  scrollDown();
}

function scheduleRender(view) {
  if (!view.frame) view.frame = requestAnimationFrame(() => render(view));
}

function fmt(n, digits = 0) {
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function showMeta(view, end) {
  const parts = [];
  if (end.status && end.status !== "completed") parts.push(end.status === "cancelled" ? "stopped" : end.status);
  const t = end.timing || {};
  if (t.ttft_ms != null) parts.push(`TTFT ${fmt(t.ttft_ms)} ms`);
  if (t.tokens_per_s != null) parts.push(`${fmt(t.tokens_per_s, 1)} tok/s`);
  const u = end.usage;
  if (u) parts.push(`${fmt(u.total_tokens ?? 0)} tokens (${fmt(u.prompt_tokens ?? 0)} in, ${fmt(u.completion_tokens ?? 0)} out)`);
  if (end.cost_usd != null) parts.push(`$${end.cost_usd < 0.01 ? end.cost_usd.toFixed(6) : end.cost_usd.toFixed(4)}`);
  const model = end.model || view.model;
  if (model) parts.push(model + (view.simulated ? " (simulated)" : ""));
  let meta = view.el.querySelector(".meta");
  if (!meta) {
    meta = document.createElement("div");
    meta.className = "meta";
    view.el.append(meta);
  }
  meta.textContent = parts.join(" · ");
}

function showError(err, { view = null, retry = null } = {}) {
  const box = document.createElement("div");
  box.className = "error";
  box.setAttribute("role", "alert");
  box.dataset.code = err.code || "error";
  const msg = document.createElement("span");
  msg.textContent = `${err.message}${err.code ? ` (${err.code})` : ""}`;
  box.append(msg);
  if (retry && err.retryable) {
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "small retry";
    btn.textContent = "Retry";
    btn.addEventListener("click", () => {
      box.remove();
      retry();
    });
    box.append(btn);
  }
  const dismiss = document.createElement("button");
  dismiss.type = "button";
  dismiss.className = "small dismiss";
  dismiss.setAttribute("aria-label", "Dismiss");
  dismiss.textContent = "×";
  dismiss.addEventListener("click", () => box.remove());
  box.append(dismiss);
  (view ? view.el : ui.messages).append(box);
  scrollDown(true);
  return box;
}

// ---- sending ----------------------------------------------------------------------------

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.send.disabled = busy;
  document.body.classList.toggle("busy", busy);
  updateActions();
}

function params() {
  const n = parseInt(ui.maxTokens.value, 10);
  return Number.isFinite(n) && n > 0 ? { max_tokens: n } : {};
}

function send(text) {
  if (!text.trim() || app.current) return;
  addMessage("user", text);
  ask(text);
}

async function ask(text, view = null) {
  view = view || addMessage("assistant", "");
  const model = ui.model.value || undefined;
  let gen;
  try {
    gen = app.client.stream(text, {
      model,
      system: ui.system.value.trim() || undefined,
      conversationId: app.conversationId,
      params: params(),
    });
  } catch (err) {
    showError(err, { view });
    return;
  }
  // Remember the reply in progress, so that a reload can re-attach to it.
  sessionStore.set(KEY.pending, JSON.stringify({ conv: app.conversationId, streamId: gen.streamId, text, model }));
  await follow(gen, view, { model, retry: () => ask(text, view) });
}

/** Show generation `gen` in the assistant message `view` until it ends. */
async function follow(gen, view, { model, retry = null }) {
  view.raw = "";
  view.el.classList.add("streaming");
  view.el.querySelector(".meta")?.remove();
  delete view.el.dataset.status;
  view.model = model;
  view.simulated = app.models.find((m) => m.id === model)?.simulated;
  app.current = { gen, view };
  view.el.dataset.genId = gen.id;
  setBusy(true);
  gen.on("start", (s) => {
    view.model = s.model;
    view.simulated = s.simulated;
  });
  try {
    for await (const token of gen) {
      view.raw += token;
      scheduleRender(view);
    }
    const end = await gen.done;
    view.el.dataset.status = end.status;
    showMeta(view, end);
  } catch (err) {
    const e = err instanceof TokenwireError ? err : new TokenwireError("error", String(err?.message || err));
    view.el.dataset.status = "failed";
    showError(e, { view, retry });
  } finally {
    if (view.frame) cancelAnimationFrame(view.frame);
    render(view);
    view.el.classList.remove("streaming");
    if (app.current?.gen === gen) app.current = null;
    if (JSON.parse(sessionStore.get(KEY.pending) || "null")?.streamId === gen.streamId) sessionStore.set(KEY.pending, null);
    setBusy(false);
    loadConversations(); // the gateway stored the turn: the list shows it (and its title)
  }
}

// ---- regenerate, edit and resend ----------------------------------------------------------

/** Cut the stored conversation before its n-th question (0-based), so that it can be asked again. */
async function truncateBeforeQuestion(n) {
  const cid = app.conversationId;
  const r = await fetch(`/v1/conversations/${encodeURIComponent(cid)}`, { headers: authHeaders() });
  if (r.status === 401) throw authError(r);
  if (r.status === 404) return; // nothing stored (e.g. the first reply failed): nothing to cut
  if (!r.ok) throw new TokenwireError("http_" + r.status, `could not load the conversation (HTTP ${r.status})`, { retryable: true });
  const turns = ((await r.json()).messages || []).filter((m) => m.role !== "system");
  let seen = -1;
  const keep = turns.findIndex((m) => m.role === "user" && ++seen === n);
  if (keep < 0) return; // that question was never stored (its reply failed): nothing after it either
  const p = await fetch(`/v1/conversations/${encodeURIComponent(cid)}`, {
    method: "PATCH",
    headers: { ...authHeaders(), "Content-Type": "application/json" },
    body: JSON.stringify({ truncate: keep }),
  });
  if (p.status === 401) throw authError(p);
  if (!p.ok) throw new TokenwireError("http_" + p.status, `could not edit the conversation (HTTP ${p.status})`, { retryable: true });
}

/** Remove `el` and every message after it from the page. */
function removeFrom(el) {
  while (el) {
    const next = el.nextElementSibling;
    el.remove();
    el = next;
  }
}

function questionIndex(userEl) {
  return [...ui.messages.querySelectorAll(".msg.user")].indexOf(userEl);
}

async function resend(userView, text) {
  if (app.current) return;
  const n = questionIndex(userView.el);
  try {
    await truncateBeforeQuestion(n);
  } catch (err) {
    if (err.code !== "unauthorized") showError(err, { view: userView, retry: () => resend(userView, text) });
    return;
  }
  sessionStore.set(KEY.pending, null);
  removeFrom(userView.el);
  send(text);
}

function regenerate(view) {
  let q = view.el.previousElementSibling;
  while (q && !q.classList.contains("user")) q = q.previousElementSibling;
  if (q?.twView) resend(q.twView, q.twView.raw);
}

function startEdit(view) {
  if (app.current || view.el.querySelector(".edit-box")) return;
  const box = document.createElement("div");
  box.className = "edit-box";
  const ta = document.createElement("textarea");
  ta.value = view.raw;
  ta.rows = Math.min(8, view.raw.split("\n").length + 1);
  ta.setAttribute("aria-label", "Edit the message");
  const done = () => {
    box.remove();
    view.body.hidden = false;
  };
  const go = () => {
    const text = ta.value;
    if (!text.trim()) return;
    done();
    resend(view, text);
  };
  ta.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      go();
    } else if (ev.key === "Escape") done();
  });
  box.append(ta, button("Send", "edit-send", go), button("Cancel", "edit-cancel", done));
  view.body.hidden = true;
  view.body.after(box);
  ta.focus();
}

/** After a reload: if a reply of this conversation was still streaming, re-attach to it. */
function resumePending(history) {
  let pending = null;
  try {
    pending = JSON.parse(sessionStore.get(KEY.pending) || "null");
  } catch {
    /* ignore */
  }
  if (!pending || pending.conv !== app.conversationId || app.current) return;
  // The gateway stores a turn together with its reply, when the reply ends.
  const turns = history.filter((m) => m.role === "user" || m.role === "assistant");
  const [asked, answered] = turns.slice(-2);
  if (asked?.role === "user" && asked.content === pending.text && answered?.role === "assistant") {
    sessionStore.set(KEY.pending, null); // its reply is already in the history
    return;
  }
  addMessage("user", pending.text);
  const view = addMessage("assistant", "");
  const { text, model } = pending;
  follow(app.client.resume(pending.streamId), view, { model, retry: () => ask(text, view) });
}

ui.stop.addEventListener("click", () => app.current?.gen.cancel());

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = ui.input.value;
  if (!text.trim() || app.current) return;
  ui.input.value = "";
  autoGrow();
  send(text);
});

ui.input.addEventListener("keydown", (ev) => {
  // Enter sends, Shift+Enter is a new line; never while an IME (Thai, CJK…) is composing.
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

function autoGrow() {
  ui.input.style.height = "auto";
  ui.input.style.height = Math.min(ui.input.scrollHeight, 200) + "px";
  setLang(ui.input, ui.input.value);
}
ui.input.addEventListener("input", autoGrow);

/** Show conversation `cid` (a new, empty one without it). */
function openConversation(cid = null) {
  app.current?.gen.cancel();
  sessionStore.set(KEY.pending, null);
  app.conversationId = cid || newConversationId();
  store.set(KEY.conv, app.conversationId);
  ui.convId.textContent = app.conversationId;
  ui.messages.replaceChildren();
  const empty = document.createElement("p");
  empty.id = "empty";
  empty.className = "empty";
  empty.textContent = cid ? "Loading…" : "New chat.";
  ui.messages.append(empty);
  renderConversations();
  closeSidebar();
  if (cid) loadHistory();
  ui.input.focus();
}

$("new-chat").addEventListener("click", () => openConversation(null));

// ---- the conversation list ----------------------------------------------------------------

async function loadConversations() {
  try {
    const r = await fetch("/v1/conversations", { headers: authHeaders() });
    if (r.status === 401) return void authError(r);
    if (!r.ok) return; // an older gateway, or the store is down: the list stays as it was
    app.conversations = (await r.json()).data || [];
    renderConversations();
  } catch {
    /* offline: keep the list */
  }
}

function renderConversations() {
  const items = app.conversations.slice();
  if (!items.some((c) => c.id === app.conversationId)) items.unshift({ id: app.conversationId, title: null, local: true });
  ui.convList.replaceChildren(
    ...items.map((c) => {
      const li = document.createElement("li");
      li.className = "conv";
      li.dataset.id = c.id;
      const open = button(c.title || "New chat", "conv-open", () => {
        if (c.id !== app.conversationId) openConversation(c.id);
        else closeSidebar();
      });
      setLang(open, c.title || "");
      if (c.id === app.conversationId) li.setAttribute("aria-current", "true");
      li.append(open);
      if (!c.local) {
        li.append(
          button("✎", "conv-rename", () => startRename(li, c), "Rename"),
          button("✕", "conv-delete", (ev) => deleteConversation(ev.currentTarget, c), "Delete"),
        );
        li.querySelector(".conv-rename").setAttribute("aria-label", `Rename “${c.title || c.id}”`);
        li.querySelector(".conv-delete").setAttribute("aria-label", `Delete “${c.title || c.id}”`);
      }
      return li;
    }),
  );
}

function startRename(li, c) {
  const input = document.createElement("input");
  input.className = "conv-title-input";
  input.value = c.title || "";
  input.maxLength = 200;
  input.setAttribute("aria-label", "New name");
  let finished = false;
  const finish = async (save) => {
    if (finished) return;
    finished = true;
    const title = input.value.trim();
    if (save && title && title !== c.title) {
      const r = await fetch(`/v1/conversations/${encodeURIComponent(c.id)}`, {
        method: "PATCH",
        headers: { ...authHeaders(), "Content-Type": "application/json" },
        body: JSON.stringify({ title }),
      });
      if (r.status === 401) authError(r);
      else if (!r.ok) showError(new TokenwireError("http_" + r.status, `could not rename (HTTP ${r.status})`, { retryable: false }));
    }
    await loadConversations();
    renderConversations();
  };
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      finish(true);
    } else if (ev.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
  li.replaceChildren(input);
  input.focus();
  input.select();
}

/** Delete asks once more on the same button ("Delete?"), without a dialog. */
async function deleteConversation(btn, c) {
  if (!btn.dataset.confirm) {
    btn.dataset.confirm = "1";
    btn.textContent = "Delete?";
    setTimeout(() => {
      if (btn.isConnected) {
        delete btn.dataset.confirm;
        btn.textContent = "✕";
      }
    }, 4000);
    return;
  }
  const r = await fetch(`/v1/conversations/${encodeURIComponent(c.id)}`, { method: "DELETE", headers: authHeaders() });
  if (r.status === 401) return void authError(r);
  app.conversations = app.conversations.filter((x) => x.id !== c.id);
  if (c.id === app.conversationId) openConversation(null);
  await loadConversations();
}

function closeSidebar() {
  document.body.classList.remove("sidebar-open");
  ui.scrim.hidden = true;
  ui.openSidebar.setAttribute("aria-expanded", "false");
}
ui.openSidebar.addEventListener("click", () => {
  document.body.classList.add("sidebar-open");
  ui.scrim.hidden = false;
  ui.openSidebar.setAttribute("aria-expanded", "true");
  ui.convList.querySelector("[aria-current] .conv-open")?.focus();
});
$("close-sidebar").addEventListener("click", closeSidebar);
ui.scrim.addEventListener("click", closeSidebar);
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && document.body.classList.contains("sidebar-open")) closeSidebar();
});

// The on-screen keyboard: keep the composer above it where the browser only shrinks the visual
// viewport (iOS Safari; Chrome resizes the layout itself: interactive-widget=resizes-content).
if (window.visualViewport) {
  const fit = () => document.documentElement.style.setProperty("--vvh", `${window.visualViewport.height}px`);
  window.visualViewport.addEventListener("resize", fit);
  fit();
}

// ---- authentication errors ----------------------------------------------------------------

/**
 * THE place where a refused key is shown: the message in the page, the settings opened and the
 * API key field focused. (The client stops reconnecting on close code 4003 by itself.)
 */
function showAuthError(message) {
  ui.messages.querySelector(".error[data-code='unauthorized']")?.remove();
  showError(new TokenwireError("unauthorized", message, { retryable: false }));
  $("settings").open = true;
  ui.apiKey.focus();
  ui.apiKey.select?.();
}

/** An HTTP 401 from the gateway: show it (showAuthError) and return it as an error. */
function authError(response) {
  const err = new TokenwireError("unauthorized", "the gateway refused the API key: enter a valid one", { retryable: false });
  showAuthError(`${err.message} (HTTP ${response.status})`);
  return err;
}

// ---- settings ---------------------------------------------------------------------------

ui.system.value = store.get(KEY.system) || "";
ui.maxTokens.value = store.get(KEY.maxTokens) || "";
ui.apiKey.value = store.get(KEY.apiKey) || "";
ui.system.addEventListener("change", () => store.set(KEY.system, ui.system.value));
ui.maxTokens.addEventListener("change", () => store.set(KEY.maxTokens, ui.maxTokens.value));
ui.apiKey.addEventListener("change", () => {
  store.set(KEY.apiKey, ui.apiKey.value.trim());
  ui.apiKey.removeAttribute("aria-invalid"); // [auth hook]
  connect(); // the key travels in the WebSocket handshake: reconnect with it
  loadModels();
  loadConversations(); // the list is per key
  openConversation(null);
});
ui.model.addEventListener("change", () => store.set(KEY.model, ui.model.value));

async function loadModels() {
  try {
    const r = await fetch("/v1/models", { headers: authHeaders() });
    if (r.status === 401) return void authError(r);
    if (!r.ok) throw new TokenwireError("http_" + r.status, `could not list models (HTTP ${r.status})`, { retryable: r.status >= 500 || r.status === 429 });
    const body = await r.json();
    app.models = body.data || [];
    const saved = store.get(KEY.model);
    ui.model.replaceChildren(
      ...app.models.map((m) => {
        const o = document.createElement("option");
        o.value = m.id;
        o.textContent = m.id + (m.simulated ? " · simulated" : "");
        if (m.pricing) o.title = `$${m.pricing.input_per_mtok} in / $${m.pricing.output_per_mtok} out per million tokens`;
        o.dataset.simulated = String(Boolean(m.simulated));
        return o;
      }),
    );
    if (saved && app.models.some((m) => m.id === saved)) ui.model.value = saved;
  } catch (err) {
    const e = err instanceof TokenwireError ? err : new TokenwireError("network", `could not list models: ${err.message}`, { retryable: true });
    showError(e, { retry: loadModels });
  }
}

async function loadHistory() {
  const cid = app.conversationId;
  try {
    const r = await fetch(`/v1/conversations/${encodeURIComponent(cid)}`, { headers: authHeaders() });
    if (r.status === 401) return void authError(r);
    if (r.status === 404) {
      if (cid === app.conversationId) $("empty")?.remove();
      return resumePending([]); // nothing stored yet: maybe its first reply is streaming
    }
    if (!r.ok) throw new TokenwireError("http_" + r.status, `could not load the conversation (HTTP ${r.status})`, { retryable: true });
    const body = await r.json();
    if (cid !== app.conversationId) return; // "New chat" was pressed meanwhile
    $("empty")?.remove();
    const history = body.messages || [];
    for (const m of history) {
      const text = typeof m.content === "string" ? m.content : Array.isArray(m.content) ? m.content.map((p) => p.text || "").join("") : "";
      if (m.role === "system") {
        if (!ui.system.value) ui.system.value = text;
      } else if (m.role === "user" || m.role === "assistant") {
        addMessage(m.role, text).el.dataset.history = "1";
      }
    }
    scrollDown(true);
    resumePending(history);
  } catch (err) {
    const e = err instanceof TokenwireError ? err : new TokenwireError("network", `could not load the conversation: ${err.message}`, { retryable: true });
    showError(e, { retry: loadHistory });
  }
}

// ---- connection status ------------------------------------------------------------------

let countdown = null;
function showStatus(s) {
  app.statusLog.push(s.state);
  ui.status.dataset.state = s.state;
  ui.reconnect.hidden = !(s.state === "offline" || s.state === "reconnecting");
  clearInterval(countdown);
  countdown = null;
  const paint = () => {
    let text = s.state;
    if (s.state === "connecting") text = "connecting…";
    else if (s.state === "reconnecting") {
      const left = s.retryAt ? Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000)) : 0;
      text = left > 0 ? `reconnecting in ${left} s` : "reconnecting…";
    } else if (s.state === "offline" && s.error) text = `offline — ${s.error.message}`;
    if (s.state === "offline" && s.error?.code === "auth_refused" && !paint.shown) {
      paint.shown = true;
      showAuthError(s.error.message);
    }
    if (ui.statusText.textContent !== text) ui.statusText.textContent = text; // no repeats for screen readers
  };
  paint();
  if (s.state === "reconnecting" && s.retryAt > Date.now()) countdown = setInterval(paint, 250);
}

ui.reconnect.addEventListener("click", () => app.client?.reconnectNow());

function connect() {
  app.client?.close();
  const opts = { apiKey: store.get(KEY.apiKey) || undefined };
  const q = new URLSearchParams(location.search); // tuning knobs, e.g. ?ping=2000&backoff=200
  if (q.get("ping")) opts.pingInterval = Number(q.get("ping"));
  if (q.get("backoff")) opts.backoffBase = Number(q.get("backoff"));
  app.client = new TokenwireClient(opts);
  app.client.onStatus(showStatus);
  app.client.on("error", (err) => showError(err));
  app.client.on("error", (err) => err instanceof TokenwireAuthError && needKey(err)); // [auth hook]
}

// ---- [auth hook] a keyed gateway refused the key (or its absence): no retrying, ask for a key --
function needKey(err) {
  document.getElementById("settings").open = true;
  ui.apiKey.setAttribute("aria-invalid", "true");
  ui.apiKey.title = err.message;
  ui.apiKey.focus();
  ui.apiKey.select();
}

ui.input.focus(); // before connecting: an auth error moves the cursor to the key field
connect();
loadModels();
if (!freshConversation) loadHistory();
loadConversations();
renderConversations();
ui.input.focus();
