// markdown.js — Markdown for untrusted model output: markdown-it (HTML disabled) and highlight.js,
// both from npm, vendored in ./vendor/ (web-src/build.mjs) with their licences.
//
// Three layers keep model output inert:
//   1. markdown-it runs with `html: false`, so any "<tag>" in the text is escaped as text;
//   2. links survive only for http(s): and mailto: URLs (anything else stays literal text);
//   3. the HTML markdown-it produces is parsed in an inert <template> and walked against an
//      allowlist of elements and attributes before it enters the page; anything else is dropped.
// The page's Content-Security-Policy (no inline scripts, no inline styles) is a fourth.
import MarkdownIt from "/static/vendor/markdown-it.min.js";
import hljs from "/static/vendor/highlight.min.js";

const SAFE_URL = /^(https?:\/\/|mailto:)/i;
const MAX_HIGHLIGHT = 20000; // characters; a longer block is shown plain (highlighting runs per frame)

/** HTML-escape a string (for callers that build markup as text; the renderer itself needs none). */
export function escapeHtml(s) {
  return String(s)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

function makeRenderer(highlight) {
  const md = new MarkdownIt({ html: false, linkify: false, typographer: false, breaks: true });
  md.validateLink = (url) => SAFE_URL.test(url.trim());
  md.disable("image"); // no requests to wherever model output points: ![x](url) stays text and a link
  const rules = md.renderer.rules;
  // One line break is a <br> (chat replies are not hard-wrapped), without the "\n" markdown-it adds.
  rules.softbreak = rules.hardbreak = () => "<br>";
  // Headings of a reply are section titles inside a bubble: # is h3 … #### and deeper are h6.
  const level = (tag) => `h${Math.min(6, Number(tag.slice(1)) + 2)}`;
  rules.heading_open = (tokens, i) => `<${level(tokens[i].tag)}>`;
  rules.heading_close = (tokens, i) => `</${level(tokens[i].tag)}>`;
  rules.link_open = (tokens, i, options, env, self) => {
    tokens[i].attrSet("target", "_blank");
    tokens[i].attrSet("rel", "noopener noreferrer nofollow");
    return self.renderToken(tokens, i, options);
  };
  // Fenced and indented code: <pre><code class="language-x" data-lang="x">, highlighted when the
  // language is known; an unclosed fence (a reply still streaming) runs to the end.
  rules.fence = rules.code_block = (tokens, i) => {
    const token = tokens[i];
    const lang = (token.info || "").trim().split(/\s+/)[0].replace(/[^\w+#.-]/g, "").slice(0, 32);
    const text = token.content.replace(/\n$/, "");
    let body = escapeHtml(text);
    if (highlight && lang && text.length <= MAX_HIGHLIGHT && hljs.getLanguage(lang)) {
      try {
        body = hljs.highlight(text, { language: lang, ignoreIllegals: true }).value;
      } catch {
        /* keep it plain */
      }
    }
    const attrs = lang ? ` class="language-${escapeHtml(lang)}" data-lang="${escapeHtml(lang)}"` : "";
    return `<pre><code${attrs}>${body}</code></pre>`;
  };
  return md;
}

const renderers = { true: makeRenderer(true), false: makeRenderer(false) };

// What may reach the page: element -> allowed attributes (and a check of their values).
const ALLOWED = {
  P: [], BR: [], H3: [], H4: [], H5: [], H6: [], UL: [], OL: ["start"], LI: [], BLOCKQUOTE: [], HR: [],
  PRE: [], CODE: ["class", "data-lang"], STRONG: [], EM: [], S: [], A: ["href", "target", "rel"],
  TABLE: [], THEAD: [], TBODY: [], TR: [], TH: [], TD: [], SPAN: ["class"],
};
const VALUE_OK = {
  href: (v) => SAFE_URL.test(v),
  target: (v) => v === "_blank",
  rel: (v) => v === "noopener noreferrer nofollow",
  start: (v) => /^\d{1,9}$/.test(v),
  class: (v) => /^(language-[\w+#.-]+|hljs[\w -]*)$/.test(v),
  "data-lang": (v) => /^[\w+#.-]+$/.test(v),
};
const KEEP_WHITESPACE = new Set(["PRE", "CODE", "SPAN"]);

function clean(node) {
  for (const child of [...node.childNodes]) {
    if (child.nodeType === Node.TEXT_NODE) {
      // markdown-it puts a "\n" between block tags: layout noise outside code
      if (child.data === "\n" && !KEEP_WHITESPACE.has(node.nodeName)) child.remove();
      continue;
    }
    const allowed = child.nodeType === Node.ELEMENT_NODE ? ALLOWED[child.nodeName] : undefined;
    if (!allowed) {
      // not ours (cannot happen with html: false; kept as a second line): keep only its text
      child.replaceWith(document.createTextNode(child.textContent || ""));
      continue;
    }
    for (const attr of [...child.attributes]) {
      if (!allowed.includes(attr.name) || !VALUE_OK[attr.name]?.(attr.value)) child.removeAttribute(attr.name);
    }
    clean(child);
  }
}

/**
 * Render Markdown text to a DocumentFragment of allowlisted elements.
 * `highlight: false` leaves code blocks plain (their text is the same either way).
 */
export function renderMarkdown(text, { highlight = true } = {}) {
  const template = document.createElement("template"); // inert: nothing in it loads or runs
  template.innerHTML = renderers[Boolean(highlight)].render(String(text ?? ""));
  const fragment = template.content;
  clean(fragment);
  return document.importNode(fragment, true);
}
