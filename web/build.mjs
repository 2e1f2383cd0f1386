// Builds the control plane's browser assets into controlplane/static (gitignored; the
// wheel ships them): one small bundle per page, minified, with gzip siblings the server
// sends to browsers that accept gzip.
import { build } from "esbuild";
import { readdirSync, readFileSync, writeFileSync, rmSync, mkdirSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = join(here, "..", "controlplane", "static");
rmSync(outdir, { recursive: true, force: true });
mkdirSync(outdir, { recursive: true });

await build({
  entryPoints: {
    dashboard: join(here, "src", "dashboard.js"),
    terminal: join(here, "src", "terminal.js"),
    app: join(here, "src", "app.css"),
  },
  bundle: true,
  minify: true,
  format: "iife",
  target: ["chrome110", "firefox110", "safari16"],
  outdir,
  legalComments: "eof",
  logLevel: "warning",
});

let total = 0;
for (const name of readdirSync(outdir)) {
  const data = readFileSync(join(outdir, name));
  const gz = gzipSync(data, { level: 9 });
  writeFileSync(join(outdir, name + ".gz"), gz);
  total += gz.length;
  console.log(`${name}: ${data.length} bytes, ${gz.length} gzip`);
}
console.log(`total gzip: ${total} bytes`);
