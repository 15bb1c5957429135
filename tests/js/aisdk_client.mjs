// Drives tokenwire with the real Vercel AI SDK (`ai`, pinned in package.json) and prints JSON.
//
//   node [--experimental-websocket] aisdk_client.mjs '<scenario JSON>'
//
// A scenario is a list of steps run in order; each step's result is printed as one JSON array:
//   {"op":"send", "transport":"http"|"ws", "url", "chatId", "messages", "body"?, "cutAfter"?, "abortAfter"?}
//     sendMessages; reads the UI message stream to its end (or stops after `cutAfter` chunks:
//     the connection is dropped; or aborts after `abortAfter` chunks: the SDK's stop()).
//   {"op":"reconnect", "transport", "url", "chatId"}   reconnectToStream (null -> {"none": true})
//   {"op":"parallel", "steps":[...]}                   several sends at once (one WS transport)
//   {"op":"stop", "url", "chatId", "afterChunks"?}      POST {url}/{chatId}/stop
// Every result has the chunk types seen, the accumulated UIMessage, the error (if any) and
// process.hrtime (CLOCK_MONOTONIC, the same clock as Python's time.monotonic) at an abort.
import { DefaultChatTransport, WebSocketChatTransport, readUIMessageStream } from "ai";

const scenario = JSON.parse(process.argv[2]);
const transports = new Map();
const monotonic = () => Number(process.hrtime.bigint()) / 1e9;

function transportFor(step) {
  const key = `${step.transport ?? "http"} ${step.url} ${step.key ?? ""}`;
  if (!transports.has(key)) {
    const headers = step.key ? { authorization: `Bearer ${step.key}` } : undefined;
    transports.set(
      key,
      step.transport === "ws"
        ? new WebSocketChatTransport({ url: step.url, params: step.key ? { key: step.key } : undefined })
        : new DefaultChatTransport({ api: step.url, headers }),
    );
  }
  return transports.get(key);
}

async function consume(stream, step, controller) {
  const chunks = [];
  let message = null;
  let error = null;
  let abortedAt = null;
  let cut = false;
  const [forChunks, forMessage] = stream.tee();
  const reading = (async () => {
    for await (const m of readUIMessageStream({ stream: forMessage, onError: () => {} })) message = m;
  })().catch((e) => {
    error ??= String(e?.message ?? e);
  });
  try {
    const reader = forChunks.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      if (step.onChunk) await step.onChunk(chunks.length);
      if (step.cutAfter && chunks.length >= step.cutAfter) {
        cut = true;
        await reader.cancel();
        controller?.abort();
        break;
      }
      if (step.abortAfter && chunks.length >= step.abortAfter) {
        abortedAt = monotonic();
        controller?.abort();
      }
    }
  } catch (e) {
    if (e?.name !== "AbortError") error = String(e?.message ?? e);
  }
  if (!cut) await reading;
  return { chunks, types: chunks.map((c) => c.type), message, error, abortedAt, cut };
}

async function send(step) {
  const controller = new AbortController();
  const t = transportFor(step);
  let stream;
  try {
    stream = await t.sendMessages({
      chatId: step.chatId,
      messages: step.messages,
      trigger: step.trigger ?? "submit-message",
      messageId: step.messageId,
      body: step.body,
      abortSignal: controller.signal,
    });
  } catch (e) {
    return { requestError: String(e?.message ?? e), statusCode: e?.statusCode ?? null };
  }
  return consume(stream, step, controller);
}

async function reconnect(step) {
  const controller = new AbortController();
  let stream;
  try {
    stream = await transportFor(step).reconnectToStream({ chatId: step.chatId, abortSignal: controller.signal });
  } catch (e) {
    return { requestError: String(e?.message ?? e), statusCode: e?.statusCode ?? null };
  }
  if (stream == null) return { none: true };
  return consume(stream, step, controller);
}

async function stop(step) {
  const at = monotonic();
  const r = await fetch(`${step.url}/${encodeURIComponent(step.chatId)}/stop`, {
    method: "POST",
    headers: step.key ? { authorization: `Bearer ${step.key}` } : {},
  });
  return { status: r.status, body: await r.json().catch(() => null), at };
}

async function run(step) {
  if (step.op === "send") return send(step);
  if (step.op === "reconnect") return reconnect(step);
  if (step.op === "stop") return stop(step);
  if (step.op === "parallel") return Promise.all(step.steps.map(run));
  throw new Error(`unknown op ${step.op}`);
}

const results = [];
try {
  for (const step of scenario) results.push(await run(step));
} finally {
  for (const t of transports.values()) t.close?.();
}
process.stdout.write(JSON.stringify(results) + "\n");
process.exit(0);
