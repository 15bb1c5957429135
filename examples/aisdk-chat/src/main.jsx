// A tiny chat page on tokenwire with the Vercel AI SDK's useChat (React).
// The page and the gateway share an origin (serve.py forwards /api/* to tokenwire), so the
// transport's default URL works; `resume: true` picks a reply back up after a reload.
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";
import { useState } from "react";
import { createRoot } from "react-dom/client";

const params = new URLSearchParams(location.search);
// one chat id per tab (kept across reloads, so a reload resumes the running reply)
const chatId = params.get("chat") ?? sessionStorage.getItem("chat") ?? `chat-${crypto.randomUUID()}`;
sessionStorage.setItem("chat", chatId);
const model = params.get("model") ?? undefined;

function Chat() {
  const { messages, sendMessage, status, error, resumeStream } = useChat({
    id: chatId,
    transport: new DefaultChatTransport({ api: "/api/chat", body: { model } }),
    resume: true,
  });
  const [input, setInput] = useState("");
  const busy = status === "submitted" || status === "streaming";

  // The SDK's stop() only drops the connection (a resumable reply outlives it): ask tokenwire to stop it.
  const stop = () => fetch(`/api/chat/${encodeURIComponent(chatId)}/stop`, { method: "POST" });

  return (
    <main>
      <h1>tokenwire + useChat</h1>
      <ol id="messages">
        {messages.map((m) => (
          <li key={m.id} className={m.role} data-role={m.role}>
            {m.parts.map((p, i) => {
              if (p.type === "text") return <span key={i} className="text">{p.text}</span>;
              if (p.type === "reasoning") return <details key={i} className="reasoning"><summary>thinking</summary>{p.text}</details>;
              if (p.type.startsWith("tool-"))
                return <code key={i} className="tool">{p.type.slice(5)}({JSON.stringify(p.input)})</code>;
              return null;
            })}
            {m.metadata?.usage && (
              <small className="usage">
                {m.metadata.model} · {m.metadata.usage.total_tokens} tokens
                {m.metadata.cost_usd != null && ` · $${m.metadata.cost_usd.toFixed(6)}`}
              </small>
            )}
          </li>
        ))}
      </ol>
      {error && <p id="error" role="alert">{error.message}</p>}
      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (input.trim()) sendMessage({ text: input });
          setInput("");
        }}
      >
        <input id="prompt" value={input} onChange={(e) => setInput(e.target.value)} placeholder="Say something" />
        <button id="send" disabled={busy}>Send</button>
        <button id="stop" type="button" onClick={stop} disabled={!busy}>Stop</button>
        <button id="resume" type="button" onClick={() => resumeStream()} disabled={busy}>Resume</button>
      </form>
      <p id="status" data-status={status}>{status}</p>
    </main>
  );
}

createRoot(document.getElementById("root")).render(<Chat />);
