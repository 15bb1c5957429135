// markdown.js — a small, safe Markdown renderer for untrusted model output.
//
// It never parses HTML: every piece of text becomes a DOM Text node (so "<script>" is shown as
// the characters "<script>"), and the only elements it creates are the fixed set below. Links
// are kept only for http(s) and mailto URLs. Supported: paragraphs (single newlines become
// line breaks), # headings, - / * / 1. lists, > quotes, --- rules, ``` fenced code blocks
// (an unclosed fence, as while a reply streams, runs to the end), `inline code`, **bold**,
// *italic* / _italic_, [links](https://…).

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const HR = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const UL = /^ {0,3}[-*+]\s+(.*)$/;
const OL = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const SAFE_URL = /^(https?:\/\/|mailto:)/i;

/** HTML-escape a string (for callers that build markup as text; the renderer itself needs none). */
export function escapeHtml(s) {
  return String(s)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

function el(doc, tag, children = []) {
  const node = doc.createElement(tag);
  for (const child of children) node.append(child);
  return node;
}

// Inline spans: code first (its content is literal), then links, bold, italic.
const INLINE =
  /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\[([^\]\n]+)\]\(([^()\s]+)\)|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__(?!\w)|\*(?=[^\s*])([\s\S]*?[^\s*])\*|(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/g;

function inline(doc, text) {
  const out = [];
  let last = 0;
  // matchAll works on a copy of the regex, so the recursion below cannot disturb this loop.
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) out.push(doc.createTextNode(text.slice(last, m.index)));
    last = m.index + m[0].length;
    if (m[1] !== undefined) {
      const code = m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2];
      out.push(el(doc, "code", [doc.createTextNode(code)]));
    } else if (m[3] !== undefined) {
      if (SAFE_URL.test(m[4])) {
        const a = el(doc, "a", inline(doc, m[3]));
        a.setAttribute("href", m[4]);
        a.setAttribute("target", "_blank");
        a.setAttribute("rel", "noopener noreferrer nofollow");
        out.push(a);
      } else {
        out.push(doc.createTextNode(m[0]));
      }
    } else if (m[5] !== undefined || m[6] !== undefined) {
      out.push(el(doc, "strong", inline(doc, m[5] ?? m[6])));
    } else {
      out.push(el(doc, "em", inline(doc, m[7] ?? m[8])));
    }
  }
  if (last < text.length) out.push(doc.createTextNode(text.slice(last)));
  return out;
}

function lines(doc, textLines) {
  // Paragraph text: single newlines become <br>.
  const out = [];
  textLines.forEach((line, i) => {
    if (i) out.push(doc.createElement("br"));
    out.push(...inline(doc, line));
  });
  return out;
}

/** Render Markdown `text` into a DocumentFragment built only from safe elements and text nodes. */
export function renderMarkdown(text, doc = document) {
  const frag = doc.createDocumentFragment();
  const src = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  let para = [];
  const flush = () => {
    if (para.length) frag.append(el(doc, "p", lines(doc, para)));
    para = [];
  };
  while (i < src.length) {
    const line = src[i];
    let m;
    if ((m = FENCE.exec(line))) {
      flush();
      const fence = m[1];
      const lang = m[2];
      const body = [];
      i += 1;
      while (i < src.length && !(src[i].trim().startsWith(fence[0].repeat(fence.length)) && /^\s*[`~]+\s*$/.test(src[i]))) {
        body.push(src[i]);
        i += 1;
      }
      i += 1; // the closing fence (or past the end)
      const code = el(doc, "code", [doc.createTextNode(body.join("\n"))]);
      if (lang) {
        code.className = "language-" + lang.replace(/[^\w+#.-]/g, "");
        code.dataset.lang = lang;
      }
      frag.append(el(doc, "pre", [code]));
      continue;
    }
    if (!line.trim()) {
      flush();
      i += 1;
      continue;
    }
    if ((m = HEADING.exec(line))) {
      flush();
      frag.append(el(doc, "h" + Math.min(6, m[1].length + 2), inline(doc, m[2])));
      i += 1;
      continue;
    }
    if (HR.test(line) && !para.length) {
      frag.append(doc.createElement("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      flush();
      const body = [];
      while (i < src.length && (m = QUOTE.exec(src[i]))) {
        body.push(m[1]);
        i += 1;
      }
      const q = doc.createElement("blockquote");
      q.append(renderMarkdown(body.join("\n"), doc));
      frag.append(q);
      continue;
    }
    const ordered = OL.exec(line);
    if (ordered || UL.test(line)) {
      flush();
      const list = doc.createElement(ordered ? "ol" : "ul");
      if (ordered && ordered[1] !== "1") list.setAttribute("start", String(parseInt(ordered[1], 10)));
      const re = ordered ? OL : UL;
      while (i < src.length) {
        m = re.exec(src[i]);
        if (!m) break;
        const item = [ordered ? m[2] : m[1]];
        i += 1;
        // Continuation lines: indented, not a new item, not blank.
        while (i < src.length && /^\s{2,}\S/.test(src[i]) && !re.test(src[i]) && !FENCE.test(src[i])) {
          item.push(src[i].trim());
          i += 1;
        }
        list.append(el(doc, "li", lines(doc, item)));
      }
      frag.append(list);
      continue;
    }
    para.push(line);
    i += 1;
  }
  flush();
  return frag;
}
