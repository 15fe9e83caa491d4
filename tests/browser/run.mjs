#!/usr/bin/env node
// Runs tests/browser/join.html in headless Chromium against a running meeting controller.
//
//   node tests/browser/run.mjs --url https://localhost:4433/meetings/m1 --hash <cert sha-256> \
//        --token <jwt> [--token2 <jwt>] [--migrate 1] [--chromium /usr/bin/chromium] [--timeout 30]
//   node tests/browser/run.mjs --page close-codes.html --url https://127.0.0.1:4433/meetings/ \
//        --hash <cert sha-256> --param token_leave=<jwt> --param token_frame=<jwt> ...
//
// Without --token2 the page joins alone and expects a participant already in the meeting
// (e.g. a native QUIC client) to be in its roster and to send it a `message`. With
// `--migrate 1` it joins with the `migrate` capability, follows the controller's `migrate`
// notice to another controller and passes once a `message` arrives there.
// --page picks another page of this directory (default join.html); --param KEY=VALUE
// (repeatable) adds a query parameter for it.
//
// No npm packages: a local HTTP server on 127.0.0.1 serves the page (a secure context, as
// WebTransport requires) and receives the page's JSON result by POST. Exit code 0 on PASS, 1 on
// FAIL or timeout, 64 on bad arguments.

import { spawn } from "node:child_process";
import { readFileSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const args = {};
const params = [];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
    console.error(`bad argument ${argv[i]}`);
    process.exit(64);
  }
  const key = argv[i].slice(2);
  const value = argv[++i];
  if (key === "param") {
    const eq = value.indexOf("=");
    if (eq < 1) {
      console.error(`bad --param ${value}: want KEY=VALUE`);
      process.exit(64);
    }
    params.push([value.slice(0, eq), value.slice(eq + 1)]);
  } else {
    args[key] = value;
  }
}
const pageName = args.page || "join.html";
if (!/^[a-z0-9-]+\.html$/.test(pageName)) {
  console.error(`bad --page ${pageName}`);
  process.exit(64);
}
for (const need of pageName === "join.html" ? ["url", "token"] : ["url"]) {
  if (!args[need]) {
    console.error(`missing --${need}`);
    process.exit(64);
  }
}
const chromium = args.chromium || process.env.CHROMIUM || "/usr/bin/chromium";
const timeoutMs = Number(args.timeout || 30) * 1000;
const page = readFileSync(join(dirname(fileURLToPath(import.meta.url)), pageName));

let finish;
const done = new Promise((resolve) => { finish = resolve; });

const http = createServer((req, res) => {
  if (req.method === "POST" && req.url === "/result") {
    let body = "";
    req.on("data", (c) => { body += c; });
    req.on("end", () => {
      res.end("ok");
      try { finish(JSON.parse(body)); } catch (e) { finish({ ok: false, error: `bad report: ${e}` }); }
    });
    return;
  }
  if (req.method === "GET" && req.url.startsWith(`/${pageName}`)) {
    res.setHeader("content-type", "text/html; charset=utf-8");
    res.end(page);
    return;
  }
  res.statusCode = 404;
  res.end();
});
await new Promise((r) => http.listen(0, "127.0.0.1", r));
const port = http.address().port;

const q = new URLSearchParams({ url: args.url, token: args.token || "", token2: args.token2 || "",
  report: `http://127.0.0.1:${port}/result` });
if (args.hash) q.set("hash", args.hash);
if (args.meeting) q.set("meeting", args.meeting);
for (const [k, v] of params) q.set(k, v);
if (args.migrate) q.set("migrate", args.migrate);
const pageUrl = `http://127.0.0.1:${port}/${pageName}?${q}`;

const profile = mkdtempSync(join(tmpdir(), "mc-chromium-"));
const browser = spawn(chromium, [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
  "--disable-dev-shm-usage", `--user-data-dir=${profile}`, "--enable-logging=stderr", "--v=0",
  pageUrl,
], { stdio: ["ignore", "ignore", "pipe"] });
let browserLog = "";
browser.stderr.on("data", (c) => { browserLog = (browserLog + c).slice(-20000); });
browser.on("exit", (code) => finish({ ok: false, error: `chromium exited with ${code}` }));

const timer = setTimeout(() => finish({ ok: false, error: `no result within ${timeoutMs / 1000}s` }), timeoutMs);
const result = await done;
clearTimeout(timer);
console.log(JSON.stringify(result, null, 2));
browser.removeAllListeners("exit");
if (browser.exitCode === null) {
  const exited = new Promise((r) => browser.once("exit", r));
  browser.kill("SIGKILL");
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
}
http.close();
try {
  rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
} catch (e) {
  console.error(`could not remove ${profile}: ${e.message}`);
}
if (!result.ok) {
  if (process.env.MC_BROWSER_LOG) console.error(browserLog);
  process.exit(1);
}
