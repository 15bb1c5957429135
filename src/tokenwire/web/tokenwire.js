// tokenwire.js — browser client for the tokenwire WebSocket protocol v1 (docs/protocol.md).
//
// A standalone ES module: no dependencies, no build step. Served by the gateway at /tokenwire.js.
//
//   import { TokenwireClient } from "/tokenwire.js";
//   const client = new TokenwireClient();                       // ws(s)://<this host>/ws/chat
//   for await (const token of client.stream("Hello", { model: "gpt-4.1" })) out.append(token);
//
// Features: many generations multiplexed on one socket (by `id`); reconnect with exponential
// backoff and full jitter; resume by `seq` (`attach`) so a dropped socket loses and repeats
// nothing; application-level ping with a timeout; per-generation backpressure (pause above a
// high-water mark of unconsumed tokens, resume below a low one); typed errors; a connection
// status event; close() removes every listener and timer. See docs/web.md.

const SUBPROTOCOL = "tokenwire.v1";
const NO_RETRY_CLOSE = new Set([1000, 1009, 4003]);

/** Every error this module reports: `code` (the protocol's codes, or the client's own), `retryable`. */
export class TokenwireError extends Error {
  constructor(code, message, { retryable = false, id = null, details = null } = {}) {
    super(message);
    this.name = "TokenwireError";
    this.code = code;
    this.retryable = Boolean(retryable);
    this.id = id;
    this.details = details; // the raw error frame, when there is one
  }

  static fromFrame(frame) {
    return new TokenwireError(String(frame.code || "error"), String(frame.message || "error"), {
      retryable: frame.retryable,
      id: frame.id ?? null,
      details: frame,
    });
  }
}

/**
 * The gateway refused the key (or its absence): retrying cannot help, a key must be given.
 * `code`: "auth_required" (no key was sent), "auth_invalid" (the key was refused) or "auth_refused"
 * (HTTP 403 / close 4003: this key or this page may not connect); `status` is the HTTP status.
 */
export class TokenwireAuthError extends TokenwireError {
  constructor(code, message, { status = 401, keySent = false, details = null } = {}) {
    super(code, message, { retryable: false, details });
    this.name = "TokenwireAuthError";
    this.status = status;
    this.keySent = keySent;
  }

  static fromResponse(status, keySent, body) {
    const said = body?.error?.message ? String(body.error.message) : "";
    if (status === 403) return new TokenwireAuthError("auth_refused", said || "the gateway refused this connection", { status, keySent, details: body });
    if (!keySent) return new TokenwireAuthError("auth_required", "this gateway needs an API key", { status, keySent, details: body });
    return new TokenwireAuthError("auth_invalid", `the API key was refused${said ? ": " + said : ""}`, { status, keySent, details: body });
  }
}

/** The HTTP URL that tells why a handshake failed (a browser hides the handshake's status). */
function authCheckUrl(wsUrl) {
  try {
    const u = new URL(wsUrl);
    u.protocol = u.protocol === "wss:" ? "https:" : "http:";
    u.pathname = "/v1/models";
    u.search = "";
    return u.href;
  } catch {
    return null;
  }
}

function randomHex(bytes = 16) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function defaultUrl() {
  if (typeof location === "undefined") throw new TokenwireError("bad_config", "no url given and no page location");
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/chat`;
}

/** A tiny event emitter whose listeners can all be dropped at once. */
class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /** Subscribe; returns a function that unsubscribes. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  _emit(event, ...args) {
    for (const fn of [...(this._listeners.get(event) || [])]) {
      try {
        fn(...args);
      } catch (err) {
        setTimeout(() => {
          throw err; // report listener bugs without breaking the stream
        });
      }
    }
  }

  _removeAllListeners() {
    this._listeners.clear();
  }
}

/**
 * One generation. Events: "start", "token" (text, frame), "reasoning", "tool_call", "error"
 * (TokenwireError), "end" (frame). Also an async iterable of token strings, and `done`, a promise
 * of the `end` frame (rejected with a TokenwireError when the generation fails).
 */
export class Generation extends Emitter {
  constructor(client, id, frame) {
    super();
    this.client = client;
    this.id = id;
    this.streamId = frame ? frame.stream_id : null;
    this.frame = frame; // the chat frame, re-sent if it never reached the server (null: resumed)
    this.text = "";
    this.lastSeq = -1;
    this.started = null; // the start frame
    this.result = null; // the end frame
    this.error = null;
    this.ended = false;
    this.sent = false; // the chat frame went out on some socket
    this.cancelRequested = false;
    this.paused = false; // we asked the server to pause this generation
    this._queue = null; // tokens not yet taken by the async iterator (null: no iterator)
    this._wake = null;
    this._backlog = 0; // the application's own render queue length (see backlog())
    this.done = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.done.catch(() => {}); // a failure is also reported by events; avoid unhandled rejections
  }

  /** Ask the server to stop this generation (its end arrives with status "cancelled"). */
  cancel() {
    if (this.ended || this.cancelRequested) return;
    this.cancelRequested = true;
    this.client._sendGen(this, { type: "cancel", id: this.id });
  }

  /**
   * Report how many tokens the application has received but not rendered yet. Counts towards
   * the high/low-water marks together with the async iterator's own queue.
   */
  backlog(n) {
    this._backlog = Math.max(0, Number(n) || 0);
    this._flow();
  }

  get pending() {
    return (this._queue ? this._queue.length : 0) + this._backlog;
  }

  _flow() {
    if (this.ended) return;
    const { highWater, lowWater } = this.client.options;
    const n = this.pending;
    if (!this.paused && n >= highWater) {
      this.paused = true;
      this.client.stats.pauses += 1;
      this.client._sendGen(this, { type: "pause", id: this.id });
    } else if (this.paused && n <= lowWater) {
      this.paused = false;
      this.client.stats.resumes += 1;
      this.client._sendGen(this, { type: "resume", id: this.id });
    }
  }

  _push(token) {
    if (this._queue) {
      this._queue.push(token);
      this._flow();
    }
    this._signal();
  }

  _signal() {
    const wake = this._wake;
    this._wake = null;
    if (wake) wake();
  }

  _finish(endFrame, error) {
    if (this.ended) return;
    this.ended = true;
    this.result = endFrame;
    if (error) this.error = error;
    this.client._forget(this);
    if (this.error && (!endFrame || endFrame.status === "failed")) this._reject(this.error);
    else this._resolve(endFrame);
    if (endFrame) this._emit("end", endFrame);
    this._signal();
  }

  _handle(frame) {
    const seq = frame.seq;
    if (typeof seq === "number") {
      if (seq <= this.lastSeq) return; // already delivered (replayed after an attach)
      if (seq !== this.lastSeq + 1) {
        // Never happens with a correct server; refuse to show a reply with a hole in it.
        this._finish(
          null,
          new TokenwireError("gap", `generation ${this.id}: expected seq ${this.lastSeq + 1}, got ${seq}`, {
            id: this.id,
          }),
        );
        this.client._sendRaw({ type: "cancel", id: this.id });
        return;
      }
      this.lastSeq = seq;
    }
    switch (frame.type) {
      case "start":
        this.started = frame;
        this._emit("start", frame);
        break;
      case "token":
        this.text += frame.content;
        this._emit("token", frame.content, frame);
        this._push(frame.content);
        break;
      case "reasoning":
        this._emit("reasoning", frame.content, frame);
        break;
      case "tool_call":
        this._emit("tool_call", frame.delta, frame);
        break;
      case "error": {
        const err = TokenwireError.fromFrame(frame);
        this.error = err;
        this._emit("error", err);
        if (typeof seq !== "number") this._finish(null, err); // refused before it started: no end follows
        break;
      }
      case "end":
        this._finish(frame, frame.status === "failed" ? this.error || new TokenwireError("failed", "generation failed", { id: this.id }) : null);
        break;
      default:
        break;
    }
  }

  /** Iterate over the tokens (strings). Tokens that arrived before iteration began come first, as one piece. */
  [Symbol.asyncIterator]() {
    if (this._queue === null) this._queue = this.text ? [this.text] : [];
    const queue = () => this._queue;
    return {
      next: async () => {
        for (;;) {
          if (queue().length) {
            const value = queue().shift();
            this._flow();
            return { value, done: false };
          }
          if (this.ended) {
            if (this.error && (!this.result || this.result.status === "failed")) throw this.error;
            return { value: undefined, done: true };
          }
          await new Promise((resolve) => {
            this._wake = resolve;
          });
        }
      },
      return: async () => {
        // The consumer stopped early (break): stop the generation too.
        this.cancel();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }
}

/**
 * Connection to a tokenwire gateway. Events: "status" ({state, retryInMs, attempt, error}),
 * "error" (TokenwireError not tied to one generation), "open", "close".
 * States: "connecting", "connected", "reconnecting", "offline", "closed".
 */
export class TokenwireClient extends Emitter {
  constructor(options = {}) {
    super();
    this.options = {
      url: options.url || defaultUrl(),
      apiKey: options.apiKey || null,
      model: options.model || null,
      pingInterval: options.pingInterval ?? 15000, // ms between application pings
      pingTimeout: options.pingTimeout ?? 10000, // ms to wait for any frame after a ping
      backoffBase: options.backoffBase ?? 500, // ms; attempt n waits random(0, base * 2^n)
      backoffMax: options.backoffMax ?? 15000,
      maxRetries: options.maxRetries ?? 8, // failed attempts in a row before "offline"
      highWater: options.highWater ?? 100,
      lowWater: options.lowWater ?? 20,
      WebSocket: options.WebSocket || globalThis.WebSocket,
      // where a failed handshake's cause is asked (401/403 end the retries); false = never ask
      authCheckUrl: options.authCheckUrl ?? null,
    };
    if (this.options.lowWater >= this.options.highWater) {
      throw new TokenwireError("bad_config", "lowWater must be below highWater");
    }
    this.status = { state: "connecting", retryInMs: 0, attempt: 0, error: null };
    this.stats = { connects: 0, reconnects: 0, attaches: 0, pauses: 0, resumes: 0, pings: 0 };
    this.generations = new Map();
    this._prefix = randomHex(3);
    this._counter = 0;
    this._ws = null;
    this._open = false;
    this._closed = false;
    this._attempt = 0;
    this._timers = new Set();
    this._reconnectTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
    this._connectTimer = null;
    this._windowListeners = [];
    if (typeof window !== "undefined" && window.addEventListener) {
      const online = () => {
        if (!this._open && !this._closed) this.reconnectNow();
      };
      const offline = () => {
        if (!this._open && !this._closed) this._setStatus({ state: "offline", retryInMs: 0 });
      };
      window.addEventListener("online", online);
      window.addEventListener("offline", offline);
      this._windowListeners.push(["online", online], ["offline", offline]);
    }
    this._connect();
  }

  /** Subscribe to status changes; called at once with the current status. Returns an unsubscribe function. */
  onStatus(fn) {
    const off = this.on("status", fn);
    fn({ ...this.status });
    return off;
  }

  get connected() {
    return this._open;
  }

  /**
   * Start a generation. `input` is the user's text: with `conversationId` it is appended to that
   * conversation's history on the gateway (and the reply is stored there); without, it is sent alone
   * (with `system`, if given). `{messages}` sends an explicit OpenAI-style message list instead.
   * Options: model, system, conversationId, params, messages, id. Returns a Generation.
   */
  stream(input, opts = {}) {
    if (this._closed) throw new TokenwireError("closed", "the client is closed");
    const id = opts.id || `${this._prefix}-${++this._counter}`;
    if (this.generations.has(id)) throw new TokenwireError("duplicate_id", `generation ${id} is running`);
    const frame = { type: "chat", id, stream_id: randomHex(16) };
    const model = opts.model || this.options.model;
    if (model) frame.model = model;
    if (opts.messages) {
      frame.messages = opts.messages;
      if (opts.conversationId) frame.conversation_id = opts.conversationId;
    } else if (opts.conversationId) {
      // One user turn appended to a conversation kept by the gateway (one reply at a time per conversation).
      frame.content = String(input);
      if (opts.system) frame.system = opts.system;
      frame.conversation_id = opts.conversationId;
    } else {
      // Stateless: only this message (and the system prompt). Such streams can run side by side.
      frame.messages = [...(opts.system ? [{ role: "system", content: opts.system }] : []), { role: "user", content: String(input) }];
    }
    if (opts.params && Object.keys(opts.params).length) frame.params = opts.params;
    const gen = new Generation(this, id, frame);
    this.generations.set(id, gen);
    if (this._open) this._sendChat(gen);
    return gen;
  }

  /**
   * Re-attach to a running (or recently ended) generation by its `streamId`, e.g. after a page
   * reload: the gateway replays it from the start (or after `lastSeq`) and continues live.
   * Fails with `stream_expired` when the gateway no longer keeps it.
   */
  resume(streamId, opts = {}) {
    if (this._closed) throw new TokenwireError("closed", "the client is closed");
    const id = opts.id || `${this._prefix}-${++this._counter}`;
    if (this.generations.has(id)) throw new TokenwireError("duplicate_id", `generation ${id} is running`);
    const gen = new Generation(this, id, null);
    gen.streamId = String(streamId);
    gen.lastSeq = opts.lastSeq ?? -1;
    gen.sent = true;
    this.generations.set(id, gen);
    if (this._open) this._attach(gen);
    return gen;
  }

  /** Skip the backoff wait and try to connect now (e.g. a "Retry" button). */
  reconnectNow() {
    if (this._closed || this._open) return;
    this._clearTimer("_reconnectTimer");
    this._attempt = 0;
    this._dropSocket();
    this._connect();
  }

  /** Close the socket and remove every listener and timer. Running generations fail with code "closed". */
  close() {
    if (this._closed) return;
    this._closed = true;
    for (const [type, fn] of this._windowListeners) window.removeEventListener(type, fn);
    this._windowListeners = [];
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    this._reconnectTimer = this._pingTimer = this._pongTimer = this._connectTimer = null;
    for (const gen of [...this.generations.values()]) {
      if (!gen.ended && gen.sent && this._open) this._sendRaw({ type: "cancel", id: gen.id });
      gen._finish(null, new TokenwireError("closed", "the client was closed", { id: gen.id }));
      gen._removeAllListeners();
    }
    this.generations.clear();
    const ws = this._ws;
    this._dropSocket();
    if (ws && ws.readyState <= 1) ws.close(1000, "client closed");
    this._setStatus({ state: "closed", retryInMs: 0 });
    this._removeAllListeners();
  }

  // -- internals ---------------------------------------------------------------------------

  _setTimer(name, fn, ms) {
    this._clearTimer(name);
    const t = setTimeout(() => {
      this._timers.delete(t);
      if (this[name] === t) this[name] = null;
      fn();
    }, ms);
    this._timers.add(t);
    this[name] = t;
  }

  _clearTimer(name) {
    const t = this[name];
    if (t != null) {
      clearTimeout(t);
      this._timers.delete(t);
      this[name] = null;
    }
  }

  _setStatus(patch) {
    this.status = { ...this.status, error: null, ...patch };
    this._emit("status", { ...this.status });
  }

  _connect() {
    if (this._closed) return;
    const { url, apiKey, WebSocket: WS } = this.options;
    this._setStatus({
      state: this.stats.connects || this._attempt ? "reconnecting" : "connecting",
      retryInMs: 0,
      attempt: this._attempt,
    });
    const protocols = [SUBPROTOCOL];
    if (apiKey) protocols.push(`bearer.${apiKey}`); // the key rides in Sec-WebSocket-Protocol, never in the URL
    let ws;
    try {
      ws = new WS(url, protocols);
    } catch (err) {
      this._fatal(new TokenwireError("bad_config", `cannot open ${url}: ${err.message}`));
      return;
    }
    this._ws = ws;
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (ev) => this._onMessage(ws, ev);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {}; // a close event always follows
    // A handshake that hangs (black-holed network) counts as a failed attempt.
    this._setTimer("_connectTimer", () => this._onDead("connect timeout"), Math.max(this.options.pingTimeout, 5000));
  }

  _dropSocket() {
    const ws = this._ws;
    this._ws = null;
    this._open = false;
    this._clearTimer("_pingTimer");
    this._clearTimer("_pongTimer");
    this._clearTimer("_connectTimer");
    if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    return ws;
  }

  _onOpen(ws) {
    if (ws !== this._ws) return;
    this._clearTimer("_connectTimer");
    this._open = true;
    if (this.stats.connects > 0) this.stats.reconnects += 1;
    this.stats.connects += 1;
    this._attempt = 0;
    this._setStatus({ state: "connected", retryInMs: 0, attempt: 0 });
    this._emit("open");
    for (const gen of this.generations.values()) {
      if (gen.ended) continue;
      if (!gen.sent) this._sendChat(gen);
      else this._attach(gen);
    }
    this._schedulePing();
  }

  _sendChat(gen) {
    gen.sent = true;
    this._sendRaw(gen.frame);
  }

  _attach(gen) {
    this.stats.attaches += 1;
    gen._attaching = true;
    this._sendRaw({ type: "attach", id: gen.id, stream_id: gen.streamId, last_seq: gen.lastSeq });
    // Pause/cancel state belongs to the old socket: restate it on the new one.
    if (gen.cancelRequested) this._sendRaw({ type: "cancel", id: gen.id });
    else if (gen.paused) this._sendRaw({ type: "pause", id: gen.id });
  }

  _sendGen(gen, frame) {
    // While disconnected, pause/resume/cancel are restated by _attach after the reconnect.
    if (this._open && gen.sent) this._sendRaw(frame);
    else if (frame.type === "cancel" && !gen.sent) {
      this.generations.delete(gen.id);
      gen._finish({ type: "end", id: gen.id, status: "cancelled", reason: "cancelled", usage: null }, null);
    }
  }

  _sendRaw(frame) {
    if (!this._open || !this._ws) return false;
    try {
      this._ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  _schedulePing() {
    const { pingInterval } = this.options;
    if (!pingInterval) return;
    this._setTimer(
      "_pingTimer",
      () => {
        if (!this._open) return;
        this.stats.pings += 1;
        this._sendRaw({ type: "ping", data: Date.now() });
        // The deadline runs from the oldest unanswered ping: a newer ping must not push it back.
        if (this._pongTimer == null) {
          this._setTimer("_pongTimer", () => this._onDead("no answer to ping"), this.options.pingTimeout);
        }
        this._schedulePing();
      },
      pingInterval,
    );
  }

  _onDead(why) {
    // The socket looks alive to the browser but nothing comes back: treat it as closed.
    const ws = this._dropSocket();
    if (ws && ws.readyState <= 1) {
      try {
        ws.close(4000, why.slice(0, 100));
      } catch {
        /* ignore */
      }
    }
    this._scheduleReconnect(new TokenwireError("ping_timeout", why, { retryable: true }));
  }

  _onMessage(ws, ev) {
    if (ws !== this._ws) return;
    this._clearTimer("_pongTimer"); // any frame proves the connection is alive
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch {
      this._emit("error", new TokenwireError("bad_frame", "the server sent a frame that is not JSON"));
      return;
    }
    if (!frame || typeof frame !== "object") return;
    if (frame.type === "pong") return;
    const gen = frame.id != null ? this.generations.get(frame.id) : null;
    if (!gen) {
      if (frame.type === "error") this._emit("error", TokenwireError.fromFrame(frame));
      return;
    }
    if (frame.type === "error" && frame.code === "stream_expired" && gen._attaching) {
      gen._attaching = false;
      if (gen.frame && gen.lastSeq < 0 && !gen.cancelRequested) {
        // The chat never reached the server (dropped before it arrived): send it again.
        this._sendChat(gen);
        return;
      }
    }
    if (frame.type !== "error") gen._attaching = false;
    gen._handle(frame);
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    const opened = this._open;
    this._dropSocket();
    this._emit("close", { code, reason });
    if (this._closed) return;
    if (NO_RETRY_CLOSE.has(code) && code !== 1000) {
      const why = `the server closed the connection (${code}${reason ? ": " + reason : ""})`;
      const err =
        code === 4003
          ? new TokenwireAuthError("auth_refused", why, { status: 403, keySent: Boolean(this.options.apiKey) })
          : new TokenwireError("frame_too_large", why);
      this._fatal(err);
      return;
    }
    const err = new TokenwireError("connection_lost", `connection closed (${code}${reason ? ": " + reason : ""})`, {
      retryable: true,
    });
    if (!opened && this.options.authCheckUrl !== false && typeof fetch === "function") {
      this._checkAuth(err); // the handshake failed: a 401/403 must not be retried forever
      return;
    }
    this._scheduleReconnect(err, code === 4001 ? 0 : null);
  }

  /** After a failed handshake: ask over HTTP whether the key is the cause; if so stop, else reconnect. */
  async _checkAuth(err) {
    const url = this.options.authCheckUrl || authCheckUrl(this.options.url);
    let refusal = null;
    if (url) {
      try {
        const keySent = Boolean(this.options.apiKey);
        const headers = keySent ? { Authorization: `Bearer ${this.options.apiKey}` } : {};
        const r = await fetch(url, { headers, cache: "no-store", credentials: "omit" });
        if (r.status === 401 || r.status === 403) {
          const body = await r.json().catch(() => null);
          refusal = TokenwireAuthError.fromResponse(r.status, keySent, body);
        }
      } catch {
        /* not reachable over HTTP either (or another origin without CORS): an ordinary reconnect */
      }
    }
    if (this._closed || this._ws) return; // closed, or reconnectNow() went ahead meanwhile
    if (refusal) this._fatal(refusal);
    else this._scheduleReconnect(err);
  }

  _fatal(err) {
    for (const gen of [...this.generations.values()]) gen._finish(null, new TokenwireError(err.code, err.message, { id: gen.id }));
    this._setStatus({ state: "offline", retryInMs: 0, error: err });
    this._emit("error", err);
  }

  _scheduleReconnect(err, delay = null) {
    if (this._closed) return;
    const { backoffBase, backoffMax, maxRetries } = this.options;
    if (this._attempt >= maxRetries) {
      this._setStatus({ state: "offline", retryInMs: 0, attempt: this._attempt, error: err });
      return;
    }
    // Exponential backoff with full jitter: random(0, min(max, base * 2^attempt)).
    const cap = Math.min(backoffMax, backoffBase * 2 ** this._attempt);
    const wait = delay ?? Math.round(Math.random() * cap);
    this._attempt += 1;
    this._setStatus({ state: "reconnecting", retryInMs: wait, retryAt: Date.now() + wait, attempt: this._attempt, error: err });
    this._setTimer("_reconnectTimer", () => this._connect(), wait);
  }

  _forget(gen) {
    if (this.generations.get(gen.id) === gen) this.generations.delete(gen.id);
  }
}

export default TokenwireClient;
