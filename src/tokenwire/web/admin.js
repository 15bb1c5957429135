// The admin dashboard (/admin): everything comes from /admin/api/* with the admin key as
// "Authorization: Bearer". The key lives in sessionStorage (this tab only). The live view is the
// gateway's own SSE stream (/admin/api/live, one snapshot a second), read with fetch so the key
// travels in a header, never in a URL; charts are uPlot (vendored from npm, web/vendor/).
"use strict";

const KEY = "tokenwire.adminKey";
const HISTORY = 300; // seconds of live history kept for the charts
const $ = (id) => document.getElementById(id);

const state = { key: sessionStorage.getItem(KEY) || "", live: null, charts: {}, flow: [[], [], []], ttft: [[], [], []] };

class Refused extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.key}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Refused(resp.status, data?.error?.message || `${resp.status} ${resp.statusText}`);
    if (resp.status === 401 || resp.status === 403) signOut(err.message);
    throw err;
  }
  return data;
}

// ---- formatting ------------------------------------------------------------------------
const fmtMs = (v) => (v == null ? "–" : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`);
const fmtUsd = (v) => (v == null ? "–" : `$${Number(v).toFixed(v && v < 0.01 ? 6 : 4)}`);
const fmtInt = (v) => (v == null ? "–" : Number(v).toLocaleString("en-US"));
const fmtTime = (t) => (t == null ? "–" : new Date(t * 1000).toLocaleTimeString());

function cell(tr, value, cls) {
  const td = document.createElement("td");
  if (value instanceof Node) td.append(value);
  else td.textContent = value == null ? "–" : String(value);
  if (cls) td.className = cls;
  tr.append(td);
  return td;
}

function fillTable(id, rows, render, empty = "nothing yet") {
  const body = $(id).tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const tr = body.insertRow();
    const td = cell(tr, empty, "muted");
    td.colSpan = $(id).tHead.rows[0].cells.length;
    return;
  }
  for (const row of rows) {
    const tr = body.insertRow();
    render(tr, row);
  }
}

// ---- sign in / out ---------------------------------------------------------------------
function signOut(message) {
  state.key = "";
  sessionStorage.removeItem(KEY);
  state.live?.abort();
  state.live = null;
  $("dash").hidden = true;
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("whoami").textContent = "";
  setLive("off", "");
  $("login").hidden = false;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
  $("admin-key").focus();
}

async function signIn() {
  try {
    const me = await api("GET", "/admin/api/whoami");
    $("whoami").textContent = `signed in as ${me.key.name} (${me.key.key})`;
  } catch (err) {
    if (!(err instanceof Refused) || (err.status !== 401 && err.status !== 403)) signOut(String(err.message || err));
    return;
  }
  $("login").hidden = true;
  $("dash").hidden = false;
  $("nav").hidden = false;
  $("logout").hidden = false;
  setupCharts();
  startLive();
  loadUsage();
  loadKeys();
  if (location.hash.startsWith("#gen/")) showGeneration(decodeURIComponent(location.hash.slice(5)));
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.key = $("admin-key").value.trim();
  $("admin-key").value = "";
  sessionStorage.setItem(KEY, state.key);
  signIn();
});
$("logout").addEventListener("click", () => signOut(""));

// ---- charts ----------------------------------------------------------------------------
function usdTick(v) {
  if (v === 0) return "$0";
  const digits = Math.min(8, Math.max(2, 1 - Math.floor(Math.log10(Math.abs(v)))));
  return `$${v.toFixed(digits)}`;
}

function chartWidth(el) {
  return Math.max(280, el.clientWidth || 600);
}

function setupCharts() {
  if (state.charts.flow || typeof uPlot === "undefined") return;
  const flowEl = $("chart-flow");
  state.charts.flow = new uPlot(
    {
      width: chartWidth(flowEl),
      height: 200,
      scales: { x: { time: true }, n: { auto: true, range: (u, lo, hi) => [0, Math.max(1, hi)] }, tps: { auto: true, range: (u, lo, hi) => [0, Math.max(1, hi)] } },
      series: [
        {},
        { label: "in flight", scale: "n", stroke: "#2f6fdf", fill: "rgba(47,111,223,0.12)", width: 2, points: { show: false } },
        { label: "tokens/s", scale: "tps", stroke: "#1e8e3e", width: 1.5, points: { show: false }, spanGaps: true },
      ],
      axes: [{}, { scale: "n" }, { scale: "tps", side: 1, grid: { show: false } }],
    },
    state.flow,
    flowEl,
  );
  const ttftEl = $("chart-ttft");
  state.charts.ttft = new uPlot(
    {
      width: chartWidth(ttftEl),
      height: 200,
      scales: { x: { time: true }, y: { auto: true, range: (u, lo, hi) => [0, Math.max(1, hi)] } },
      series: [
        {},
        { label: "p50 ms", stroke: "#2f6fdf", width: 2, spanGaps: true },
        { label: "p99 ms", stroke: "#c77700", width: 2, spanGaps: true },
      ],
      axes: [{}, { size: 60 }],
    },
    state.ttft,
    ttftEl,
  );
  const usageEl = $("chart-usage");
  state.charts.usage = new uPlot(
    {
      width: chartWidth(usageEl),
      height: 200,
      scales: { x: { time: true }, usd: { auto: true, range: (u, lo, hi) => [0, hi > 0 ? hi : 1e-6] }, tok: { auto: true, range: (u, lo, hi) => [0, Math.max(1, hi)] } },
      series: [
        {},
        { label: "USD", scale: "usd", stroke: "#2f6fdf", fill: "rgba(47,111,223,0.35)", width: 1, points: { show: false }, paths: uPlot.paths.bars({ size: [0.8, 40] }), value: (u, v) => (v == null ? "–" : `$${v.toFixed(6)}`) },
        { label: "tokens", scale: "tok", stroke: "#1e8e3e", width: 1.5, points: { show: false } },
      ],
      axes: [{}, { scale: "usd", size: 80, values: (u, vals) => vals.map(usdTick) }, { scale: "tok", side: 1, size: 60, grid: { show: false } }],
    },
    [[], [], []],
    usageEl,
  );
  window.addEventListener("resize", () => {
    for (const [name, chart] of Object.entries(state.charts)) {
      const el = $(`chart-${name}`);
      chart.setSize({ width: chartWidth(el), height: 200 });
    }
  });
}

function push(series, t, ...values) {
  series[0].push(t);
  values.forEach((v, i) => series[i + 1].push(v));
  while (series[0].length && series[0][0] < t - HISTORY) series.forEach((s) => s.shift());
}

// ---- live ------------------------------------------------------------------------------
function setLive(stateName, text) {
  const el = $("live-status");
  el.dataset.state = stateName;
  el.textContent = text;
}

/** Read the SSE stream with fetch (headers carry the key); on a drop, reconnect after a pause. */
async function startLive() {
  state.live?.abort();
  const ctrl = new AbortController();
  state.live = ctrl;
  let delay = 500;
  while (!ctrl.signal.aborted && state.key) {
    try {
      setLive("connecting", "connecting…");
      const resp = await fetch("/admin/api/live", {
        headers: { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" },
        signal: ctrl.signal,
        cache: "no-store",
      });
      if (resp.status === 401 || resp.status === 403) {
        const data = await resp.json().catch(() => ({}));
        signOut(data?.error?.message || "the admin key was refused");
        return;
      }
      if (!resp.ok || !resp.body) throw new Error(`${resp.status}`);
      setLive("live", "live");
      delay = 500;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (event === "snapshot") onSnapshot(JSON.parse(data.join("\n")));
          else if (event === "close") {
            signOut(JSON.parse(data.join("\n")).reason);
            return;
          }
        }
      }
    } catch (err) {
      if (ctrl.signal.aborted) return;
    }
    setLive("down", "reconnecting…");
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

// Under `serve --workers N` the snapshot adds up every worker (s.workers; s.workers_missing did not answer).
function scopeText(s) {
  if (!s.workers) return "this process";
  const all = s.workers.length + (s.workers_missing || 0);
  return s.workers_missing ? `${s.workers.length} of ${all} workers answered` : `all ${all} workers`;
}

function onSnapshot(s) {
  $("live-scope").textContent = $("latest-scope").textContent = scopeText(s);
  $("live-inflight").textContent = fmtInt(s.in_flight);
  $("live-tps").textContent = s.tokens_per_s == null ? "–" : fmtInt(Math.round(s.tokens_per_s));
  $("live-ttft50").textContent = fmtMs(s.ttft_p50_ms);
  $("live-ttft99").textContent = fmtMs(s.ttft_p99_ms);
  $("live-ended").textContent = `${fmtInt(s.ended_in_window)} / ${fmtInt(s.failed_in_window)}`;
  $("live-sockets").textContent = fmtInt(s.sockets);
  document.body.dataset.inFlight = String(s.in_flight); // for tests and scripts
  push(state.flow, s.t, s.in_flight, s.tokens_per_s);
  push(state.ttft, s.t, s.ttft_p50_ms, s.ttft_p99_ms);
  state.charts.flow?.setData(state.flow);
  state.charts.ttft?.setData(state.ttft);
  const inFlight = s.in_flight_by_model || {};
  const models = [...s.models];
  for (const m of Object.keys(inFlight)) if (!models.some((r) => r.model === m)) models.push({ model: m, provider: "" });
  fillTable("models-table", models, (tr, m) => {
    cell(tr, m.model);
    cell(tr, m.provider);
    cell(tr, inFlight[m.model] || 0, "n");
    cell(tr, m.generations ?? 0, "n");
    cell(tr, m.failed ?? 0, "n");
    for (const k of ["ttft_p50_ms", "ttft_p99_ms", "total_p50_ms", "total_p99_ms"]) cell(tr, fmtMs(m[k]), "n");
  }, "no generations in the last minute");
  fillTable("errors-table", s.errors, (tr, e) => {
    cell(tr, e.provider);
    cell(tr, e.code);
    cell(tr, e.upstream_status);
    cell(tr, e.count, "n");
  }, "no errors");
  if (s.latest) renderLatest(s.latest);
}

function genLink(id) {
  const a = document.createElement("a");
  a.href = `#gen/${encodeURIComponent(id)}`;
  a.textContent = id.length > 14 ? `${id.slice(0, 14)}…` : id;
  a.title = id;
  return a;
}

function renderLatest(rows) {
  fillTable("latest-table", rows, (tr, g) => {
    cell(tr, fmtTime(g.ended));
    cell(tr, genLink(g.stream_id));
    cell(tr, g.key?.name || g.key?.label || "–");
    cell(tr, g.model);
    cell(tr, g.status, `st-${g.status}`);
    cell(tr, fmtInt(g.tokens), "n");
    cell(tr, fmtMs(g.ttft_ms), "n");
    cell(tr, fmtMs(g.total_ms), "n");
    cell(tr, fmtUsd(g.cost_usd), "n");
  });
}

// ---- usage -----------------------------------------------------------------------------
async function loadUsage() {
  let u;
  try {
    u = await api("GET", `/admin/api/usage?window=${encodeURIComponent($("usage-window").value)}`);
  } catch (err) {
    $("usage-total").textContent = String(err.message);
    return;
  }
  $("usage-total").textContent =
    `${fmtInt(u.total.requests)} requests, ${fmtInt(u.total.tokens)} tokens, ${fmtUsd(u.total.cost_usd)} ` +
    `from ${new Date(u.since * 1000).toLocaleString()} (steps of ${u.step_s / 60} min)`;
  state.charts.usage?.setData([u.series.t, u.series.cost_usd, u.series.tokens]);
  const row = (tr, r) => {
    cell(tr, fmtInt(r.requests), "n");
    cell(tr, fmtInt(r.prompt_tokens), "n");
    cell(tr, fmtInt(r.completion_tokens), "n");
    cell(tr, fmtUsd(r.cost_usd), "n");
  };
  fillTable("usage-keys", u.by_key, (tr, r) => {
    cell(tr, `${r.name} (${r.key || r.id})`);
    row(tr, r);
  }, "no usage in this window");
  fillTable("usage-models", u.by_model, (tr, r) => {
    cell(tr, r.model);
    row(tr, r);
  }, "no usage in this window");
}
$("usage-window").addEventListener("change", loadUsage);
$("usage-refresh").addEventListener("click", loadUsage);

// ---- keys ------------------------------------------------------------------------------
function keysError(message) {
  $("keys-error").hidden = !message;
  $("keys-error").textContent = message || "";
}

function numOrNull(text, integer) {
  const t = String(text).trim();
  if (!t) return null;
  const v = Number(t);
  return integer ? Math.trunc(v) : v;
}

function editable(value, kind, label) {
  const input = document.createElement("input");
  // defaultValue is what the gateway holds: a redraw tells an unsaved edit by it (unsavedEdits)
  input.defaultValue = input.value = value == null ? "" : Array.isArray(value) ? value.join(",") : String(value);
  input.placeholder = kind === "models" ? "any" : "none";
  input.setAttribute("aria-label", label);
  input.dataset.field = kind;
  input.size = kind === "models" ? 14 : 6;
  return input;
}

// Several loads can be in flight (signing in, a key just created, one saved): only the newest
// may draw the table, or a late answer would put back a table without the new key. A redraw
// keeps what the operator typed into a row and has not saved yet.
let keysLoad = 0;

function unsavedEdits() {
  const edits = new Map();
  for (const input of $("keys-table").querySelectorAll("input[data-field]")) {
    if (input.value !== input.defaultValue) {
      const id = input.closest("tr").dataset.keyId;
      if (!edits.has(id)) edits.set(id, {});
      edits.get(id)[input.dataset.field] = input.value;
    }
  }
  return edits;
}

async function loadKeys(saved = null) {
  const mine = ++keysLoad;
  let data;
  try {
    data = (await api("GET", "/admin/api/keys")).data;
  } catch (err) {
    if (mine === keysLoad) keysError(err.message);
    return;
  }
  if (mine !== keysLoad) return;
  const edits = unsavedEdits();
  if (saved != null) edits.delete(saved);
  fillTable("keys-table", data, (tr, k) => {
    tr.dataset.keyId = k.id;
    tr.dataset.name = k.name;
    cell(tr, k.name + (k.admin ? " ★" : ""));
    cell(tr, k.key, "mono");
    cell(tr, k.revoked ? "revoked" : "active", k.revoked ? "st-failed" : "st-completed");
    const active = !k.revoked;
    const inputs = [
      editable(k.rpm, "rpm", `RPM of ${k.name}`),
      editable(k.tpm, "tpm", `TPM of ${k.name}`),
      editable(k.budget_usd, "budget_usd", `budget of ${k.name}`),
      editable(k.models, "models", `models of ${k.name}`),
    ];
    const kept = edits.get(k.id) || {};
    for (const input of inputs) {
      input.disabled = !active;
      if (active && input.dataset.field in kept) input.value = kept[input.dataset.field];
      cell(tr, input);
    }
    cell(tr, fmtUsd(k.cost_usd), "n");
    cell(tr, fmtInt(k.requests), "n");
    const actions = document.createElement("span");
    if (active) {
      const save = document.createElement("button");
      save.type = "button";
      save.className = "small";
      save.textContent = "Save";
      save.dataset.action = "save";
      save.addEventListener("click", () => saveKey(k, inputs));
      const revoke = document.createElement("button");
      revoke.type = "button";
      revoke.className = "small danger";
      revoke.textContent = "Revoke";
      revoke.dataset.action = "revoke";
      revoke.addEventListener("click", () => revokeKey(k));
      actions.append(save, " ", revoke);
    }
    cell(tr, actions);
  }, "no keys");
}

async function saveKey(k, inputs) {
  const body = {};
  for (const input of inputs) {
    const f = input.dataset.field;
    if (f === "models") body.models = input.value.split(",").map((m) => m.trim()).filter(Boolean);
    else body[f] = numOrNull(input.value, f !== "budget_usd");
  }
  try {
    await api("PATCH", `/admin/api/keys/${encodeURIComponent(k.id)}`, body);
    keysError("");
  } catch (err) {
    keysError(err.message);
    return;
  }
  loadKeys(k.id);
}

async function revokeKey(k) {
  try {
    await api("POST", `/admin/api/keys/${encodeURIComponent(k.id)}/revoke`);
    keysError("");
  } catch (err) {
    keysError(err.message);
  }
  loadKeys();
}

$("create-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = { name: $("new-name").value.trim(), admin: $("new-admin").checked };
  const rpm = numOrNull($("new-rpm").value, true);
  const tpm = numOrNull($("new-tpm").value, true);
  const budget = numOrNull($("new-budget").value, false);
  if (rpm != null) body.rpm = rpm;
  if (tpm != null) body.tpm = tpm;
  if (budget != null) body.budget_usd = budget;
  const models = $("new-models").value.split(",").map((m) => m.trim()).filter(Boolean);
  if (models.length) body.models = models;
  let created;
  try {
    created = await api("POST", "/admin/api/keys", body);
  } catch (err) {
    keysError(err.message);
    return;
  }
  keysError("");
  $("create-form").reset();
  $("created-name").textContent = created.name;
  $("created-key").textContent = created.key; // only here, only now: the gateway keeps its hash
  $("created").hidden = false;
  loadKeys();
});
$("created-copy").addEventListener("click", () => navigator.clipboard?.writeText($("created-key").textContent));
$("created-dismiss").addEventListener("click", () => {
  $("created-key").textContent = "";
  $("created").hidden = true;
});

// ---- a generation's detail -------------------------------------------------------------
async function showGeneration(id) {
  const box = $("gen-detail");
  box.hidden = false;
  box.replaceChildren();
  let g;
  try {
    g = await api("GET", `/admin/api/generations/${encodeURIComponent(id)}`);
  } catch (err) {
    box.textContent = err.message;
    box.dataset.state = "error";
    return;
  }
  box.dataset.state = g.status;
  const h = document.createElement("h3");
  h.textContent = `${g.stream_id} — ${g.status}`;
  const dl = document.createElement("dl");
  const facts = [
    ["Key", g.key?.name ? `${g.key.name} (${g.key.key})` : g.key?.label || "–"],
    ["Model", `${g.model} via ${g.provider}${g.upstream_model ? ` (answered as ${g.upstream_model})` : ""}`],
    ["Started", g.started ? new Date(g.started * 1000).toLocaleString() : "–"],
    ["Tokens", `${fmtInt(g.tokens)} (prompt ${fmtInt(g.usage?.prompt_tokens)}, completion ${fmtInt(g.usage?.completion_tokens)}${g.usage_estimated ? ", estimated" : ""})`],
    ["Timing", g.timing ? `first token ${fmtMs(g.timing.ttft_ms)}, total ${fmtMs(g.timing.total_ms)}, ${g.timing.tokens_per_s ?? "–"} tokens/s, mean gap ${fmtMs(g.mean_gap_ms)}${g.max_gap_ms != null ? `, longest gap ${fmtMs(g.max_gap_ms)}` : ""}` : "–"],
    ["Cost", fmtUsd(g.cost_usd)],
  ];
  if (g.error) facts.push(["Error", `${g.error.code}: ${g.error.message}`]);
  if (g.reason) facts.push(["Reason", g.reason]);
  for (const [k, v] of facts) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
  box.append(h, dl);
  if (g.timeline) {
    const total = Math.max(1, ...g.timeline.map((e) => e.at_ms || 0));
    const ol = document.createElement("ol");
    ol.className = "timeline";
    for (const e of g.timeline) {
      const li = document.createElement("li");
      const bar = document.createElement("span");
      bar.className = "tick";
      bar.style.marginLeft = `${((e.at_ms || 0) / total) * 60}%`;
      const extra = Object.entries(e).filter(([k]) => k !== "at_ms" && k !== "event").map(([k, v]) => `${k}=${v}`).join(" ");
      li.append(bar, ` ${fmtMs(e.at_ms)} ${e.event}${extra ? ` (${extra})` : ""}`);
      ol.append(li);
    }
    box.append(ol);
  }
}
$("gen-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = $("gen-id").value.trim();
  if (id) location.hash = `#gen/${encodeURIComponent(id)}`;
});
window.addEventListener("hashchange", () => {
  if (state.key && location.hash.startsWith("#gen/")) {
    showGeneration(decodeURIComponent(location.hash.slice(5)));
    $("generations").scrollIntoView();
  }
});

// ---- start -----------------------------------------------------------------------------
if (state.key) signIn();
else signOut("");
