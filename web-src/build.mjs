// Copy the web pages' (chat, admin dashboard) third-party browser code from node_modules into src/tokenwire/web/vendor/,
// with every licence, so the Python package ships it and needs no npm (and no CDN) at run time.
// Usage: cd web-src && npm ci && npm run build   (then commit src/tokenwire/web/vendor/)
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const nm = join(here, "node_modules");
const out = join(here, "..", "src", "tokenwire", "web", "vendor");
const version = (pkg) => JSON.parse(readFileSync(join(nm, pkg, "package.json"), "utf8")).version;

// [source in node_modules, name in vendor/]; ES modules are renamed .js (served as text/javascript)
const FILES = [
  ["markdown-it/dist/browser/markdown-it.esm.min.mjs", "markdown-it.min.js"],
  ["@highlightjs/cdn-assets/es/highlight.min.js", "highlight.min.js"],
  ["@highlightjs/cdn-assets/styles/github.min.css", "highlight-github.min.css"],
  ["@highlightjs/cdn-assets/styles/github-dark.min.css", "highlight-github-dark.min.css"],
  // the admin dashboard's charts (a classic script: it defines the global uPlot)
  ["uplot/dist/uPlot.iife.min.js", "uplot.iife.min.js"],
  ["uplot/dist/uPlot.min.css", "uplot.min.css"],
];
// markdown-it's browser build bundles these; their licences travel with it
const LICENCES = [
  ["markdown-it", "LICENSE"],
  ["entities", "LICENSE"],
  ["linkify-it", "LICENSE"],
  ["mdurl", "LICENSE"],
  ["uc.micro", "LICENSE.txt"],
  ["punycode.js", "LICENSE-MIT.txt"],
  ["@highlightjs/cdn-assets", "LICENSE"],
  ["uplot", "LICENSE"],
];

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
for (const [src, name] of FILES) {
  let text = readFileSync(join(nm, src), "utf8");
  text = text.replace(/\n?\/\/# sourceMappingURL=\S+\s*$/, "\n").replace(/\n?\/\*# sourceMappingURL=\S+ \*\/\s*$/, "\n");
  writeFileSync(join(out, name), text);
}
const lines = ["Third-party code of the web pages (chat, /admin), copied from npm by web-src/build.mjs (do not edit by hand).", ""];
for (const [pkg, file] of LICENCES) {
  const name = `LICENSE.${pkg.replace("@", "").replace("/", "-")}.txt`;
  copyFileSync(join(nm, pkg, file), join(out, name));
  lines.push(`${pkg} ${version(pkg)}: ${name}`);
}
writeFileSync(join(out, "README.txt"), lines.join("\n") + "\n");
console.log(`vendored into ${out}:\n  ${lines.slice(2).join("\n  ")}`);
