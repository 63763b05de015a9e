// Bundles the page into dist/ (index.html, app.js, app.css), which the
// execd build embeds into the binary. Run by `npm run build` after `npm ci`.
import { copyFile, mkdir, rm } from "node:fs/promises";
import * as esbuild from "esbuild";

await rm("dist", { recursive: true, force: true });
await mkdir("dist", { recursive: true });
await esbuild.build({
  entryPoints: { app: "src/main.js" },
  bundle: true,
  minify: true,
  // No eval and no inline code anywhere: the page's CSP forbids both.
  format: "iife",
  target: ["es2020"],
  outdir: "dist",
  // Licence notices of the bundled packages stay in the bundles.
  legalComments: "eof",
  logLevel: "warning",
});
await copyFile("src/index.html", "dist/index.html");
